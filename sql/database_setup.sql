SET time_zone = '+00:00';
-- =============================================================================
-- Demo schema and seed data for iterable-sync.
--
-- Loads into whichever database the caller selected (this file never creates
-- or switches databases), for example:
--   mysql --default-character-set=utf8mb4 my_db < sql/database_setup.sql
-- Re-running it drops and recreates both tables, so it resets the demo data.
-- Valid on MySQL 8.0+ and MariaDB 10.6+.
--
-- All DATETIME values are UTC. Page view times are relative to load time
-- (UTC_TIMESTAMP() - INTERVAL ...), so the 7-day window always contains both
-- qualifying and non-qualifying rows.
--
-- Edge cases (customer id, plan, case, expected Query 2 result for
-- plan_type = pro and lookback_days = 7):
--   1  pro         several views in the window, the latest has a LOWER id
--                  than older ones (ordering is by time, not id)  -> view 2
--   2  pro         non-ASCII name (José Müller) and location        -> view 7
--   3  pro         CJK name (王 小明) and CJK page path             -> view 9
--   4  pro         all views older than 7 days                     -> absent
--   5  pro         two views at the same second                    -> view 15
--                  (the higher page view id wins the tie)
--   6  pro         latest view just inside the window (6 d 23 h)   -> view 17
--   7  pro         only view just outside the window (7 d 1 h)     -> absent
--   8  pro         malformed email (not-an-email)                  -> view 20
--                  (the query returns it, the program rejects it)
--   9  pro         latest view has NULL device and NULL location   -> view 23
--   10 pro         no page views at all                            -> absent
--   11 free        recent views                                    -> absent
--   12 basic       recent views                                    -> absent
--   13 enterprise  recent views (view 31 for plan enterprise)      -> absent
--   14 enterprise  views 20 and 45 days old (view 34 for
--                  enterprise with lookback_days = 30)             -> absent
--   15 basic       only old views (Zürich location)                -> absent
--
-- With lookback_days = 30 the pro result also gains 4 (view 11) and
-- 7 (view 19).
-- =============================================================================

-- Literals below are UTF-8 whatever the client default character set is.
SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci;

-- Children first so the foreign key never blocks the drop.
DROP TABLE IF EXISTS page_views;
DROP TABLE IF EXISTS customers;

CREATE TABLE customers (
    id         INT          NOT NULL AUTO_INCREMENT,
    email      VARCHAR(255) NOT NULL,
    first_name VARCHAR(100) NULL,
    last_name  VARCHAR(100) NULL,
    plan_type  VARCHAR(20)  NOT NULL,
    created_at DATETIME     NULL COMMENT 'UTC',
    PRIMARY KEY (id),
    UNIQUE KEY uq_customers_email (email),
    -- Query 2 filters on plan_type and joins on id: both come from this index.
    KEY idx_customers_plan_type_id (plan_type, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE page_views (
    id          BIGINT        NOT NULL AUTO_INCREMENT,
    customer_id INT           NOT NULL,
    page        VARCHAR(2048) NOT NULL,
    device      VARCHAR(64)   NULL,
    location    VARCHAR(128)  NULL,
    viewed_at   DATETIME      NOT NULL COMMENT 'UTC',
    PRIMARY KEY (id),
    -- Per-customer range scan on viewed_at, already in ROW_NUMBER order
    -- (viewed_at, id). Also serves the foreign key.
    KEY idx_page_views_customer_viewed_id (customer_id, viewed_at, id),
    -- Time-window scans across all customers (summaries, retention jobs).
    KEY idx_page_views_viewed_at (viewed_at),
    CONSTRAINT fk_page_views_customer
        FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- One reference instant for the whole load, so equal offsets give equal times.
SET @t0 = UTC_TIMESTAMP();

INSERT INTO customers (id, email, first_name, last_name, plan_type, created_at) VALUES
    (1,  'alice.anderson@example.com', 'Alice',   'Anderson', 'pro',        @t0 - INTERVAL 400 DAY),
    (2,  'jose.muller@example.com',    'José',    'Müller',   'pro',        @t0 - INTERVAL 300 DAY),
    (3,  'xiaoming.wang@example.com',  '小明',    '王',       'pro',        @t0 - INTERVAL 200 DAY),
    (4,  'dormant.pro@example.com',    'Dora',    'Dormant',  'pro',        @t0 - INTERVAL 500 DAY),
    (5,  'same.second@example.com',    'Sam',     'Second',   'pro',        @t0 - INTERVAL 90 DAY),
    (6,  'just.inside@example.com',    'Ina',     'Inside',   'pro',        @t0 - INTERVAL 60 DAY),
    (7,  'just.outside@example.com',   'Otto',    'Outside',  'pro',        @t0 - INTERVAL 60 DAY),
    (8,  'not-an-email',               'Mal',     'Formed',   'pro',        @t0 - INTERVAL 30 DAY),
    (9,  'null.device@example.com',    'Nell',    'Nulls',    'pro',        @t0 - INTERVAL 45 DAY),
    (10, 'no.views@example.com',       'Nova',    'Noviews',  'pro',        @t0 - INTERVAL 10 DAY),
    (11, 'free.user@example.com',      'Fred',    'Free',     'free',       @t0 - INTERVAL 20 DAY),
    (12, 'basic.user@example.com',     'Bea',     'Basic',    'basic',      @t0 - INTERVAL 100 DAY),
    (13, 'ent.active@example.com',     'Erin',    'Enterprise', 'enterprise', @t0 - INTERVAL 700 DAY),
    (14, 'ent.quiet@example.com',      'Quinn',   'Quiet',    'enterprise', @t0 - INTERVAL 800 DAY),
    (15, 'basic.old@example.com',      'Bruno',   'Älter',    'basic',      @t0 - INTERVAL 900 DAY);

INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) VALUES
    -- 1: several views in the window; view 2 is the latest despite its low id.
    (1,  1,  '/pricing',                  'desktop', 'Berlin, DE',     @t0 - INTERVAL 5 DAY),
    (2,  1,  '/app/dashboard?tab=usage',  'mobile',  'Berlin, DE',     @t0 - INTERVAL 30 MINUTE),
    (3,  1,  '/docs/getting-started',     'desktop', 'Berlin, DE',     @t0 - INTERVAL 3 DAY),
    (4,  1,  '/app/settings',             'tablet',  'Hamburg, DE',    @t0 - INTERVAL 1 DAY),
    (5,  1,  '/blog/launch',              'desktop', 'Berlin, DE',     @t0 - INTERVAL 10 DAY),
    -- 2: non-ASCII name and location.
    (6,  2,  '/app/reports',              'desktop', 'São Paulo, BR',  @t0 - INTERVAL 2 DAY),
    (7,  2,  '/app/reports/café',         'mobile',  'São Paulo, BR',  @t0 - INTERVAL 4 HOUR),
    (8,  2,  '/pricing',                  'desktop', 'São Paulo, BR',  @t0 - INTERVAL 9 DAY),
    -- 3: CJK name and page path.
    (9,  3,  '/docs/入门',                'mobile',  '東京, JP',       @t0 - INTERVAL 6 HOUR),
    (10, 3,  '/app/dashboard',            'desktop', '東京, JP',       @t0 - INTERVAL 3 DAY),
    -- 4: pro, but every view is older than 7 days.
    (11, 4,  '/app/dashboard',            'desktop', 'Leeds, GB',      @t0 - INTERVAL 8 DAY),
    (12, 4,  '/app/billing',              'desktop', 'Leeds, GB',      @t0 - INTERVAL 15 DAY),
    (13, 4,  '/pricing',                  'mobile',  'Leeds, GB',      @t0 - INTERVAL 25 DAY),
    -- 5: views 14 and 15 share the same second; the higher id (15) wins.
    (14, 5,  '/app/export',               'desktop', 'Lyon, FR',       @t0 - INTERVAL 2 HOUR),
    (15, 5,  '/app/export/done',          'desktop', 'Lyon, FR',       @t0 - INTERVAL 2 HOUR),
    (16, 5,  '/app/dashboard',            'mobile',  'Lyon, FR',       @t0 - INTERVAL 1 DAY),
    -- 6: latest view one hour inside the window.
    (17, 6,  '/app/dashboard',            'desktop', 'Oslo, NO',       @t0 - INTERVAL 6 DAY - INTERVAL 23 HOUR),
    (18, 6,  '/pricing',                  'desktop', 'Oslo, NO',       @t0 - INTERVAL 12 DAY),
    -- 7: only view one hour outside the window.
    (19, 7,  '/app/dashboard',            'desktop', 'Bergen, NO',     @t0 - INTERVAL 7 DAY - INTERVAL 1 HOUR),
    -- 8: malformed email, recent activity.
    (20, 8,  '/app/profile',              'mobile',  'Austin, US',     @t0 - INTERVAL 1 DAY),
    (21, 8,  '/app/dashboard',            'desktop', 'Austin, US',     @t0 - INTERVAL 2 DAY),
    -- 9: latest view has neither device nor location.
    (22, 9,  '/app/dashboard',            'desktop', NULL,             @t0 - INTERVAL 3 DAY),
    (23, 9,  '/app/integrations',         NULL,      NULL,             @t0 - INTERVAL 5 HOUR),
    -- 11: free plan, recent views.
    (24, 11, '/pricing',                  'mobile',  'Madrid, ES',     @t0 - INTERVAL 1 HOUR),
    (25, 11, '/signup',                   'mobile',  'Madrid, ES',     @t0 - INTERVAL 2 DAY),
    (26, 11, '/',                         'desktop', 'Madrid, ES',     @t0 - INTERVAL 20 DAY),
    -- 12: basic plan, recent views.
    (27, 12, '/app/dashboard',            'desktop', 'Toronto, CA',    @t0 - INTERVAL 3 HOUR),
    (28, 12, '/app/upgrade',              'desktop', NULL,             @t0 - INTERVAL 4 DAY),
    (29, 12, '/pricing',                  NULL,      'Toronto, CA',    @t0 - INTERVAL 6 DAY),
    -- 13: enterprise, recent views; view 31 is the latest.
    (30, 13, '/app/admin',                'desktop', 'Sydney, AU',     @t0 - INTERVAL 1 DAY),
    (31, 13, '/app/admin/sso',            'desktop', 'Sydney, AU',     @t0 - INTERVAL 10 MINUTE),
    (32, 13, '/app/dashboard',            'mobile',  'Sydney, AU',     @t0 - INTERVAL 5 DAY),
    (33, 13, '/docs/api',                 'desktop', 'Sydney, AU',     @t0 - INTERVAL 40 DAY),
    -- 14: enterprise, only old views; view 34 is inside a 30-day window.
    (34, 14, '/app/dashboard',            'desktop', 'Dublin, IE',     @t0 - INTERVAL 20 DAY),
    (35, 14, '/app/billing',              'desktop', 'Dublin, IE',     @t0 - INTERVAL 45 DAY),
    -- 15: basic, only old views.
    (36, 15, '/app/dashboard',            'desktop', 'Zürich, CH',     @t0 - INTERVAL 8 DAY),
    (37, 15, '/app/reports',              'desktop', 'Zürich, CH',     @t0 - INTERVAL 9 DAY),
    (38, 15, '/pricing',                  'mobile',  'Zürich, CH',     @t0 - INTERVAL 60 DAY),
    (39, 15, '/',                         NULL,      NULL,             @t0 - INTERVAL 90 DAY),
    (40, 15, '/signup',                   'desktop', 'Zürich, CH',     @t0 - INTERVAL 100 DAY);
