-- =============================================================================
-- Phase 2 queries: customers on a plan whose latest page view is recent.
--
-- Parameters are session variables so this file runs as-is in the mysql
-- client. The program binds them with a parameterised
--   SET @plan_type = %s, @lookback_days = %s
-- and then runs one "-- name: ..." block verbatim.
--
-- "Within the last N days" means
--   pv.viewed_at >= UTC_TIMESTAMP() - INTERVAL @lookback_days DAY
-- (viewed_at holds UTC, so the session time zone does not matter).
--
-- @plan_type is compared as CONVERT(... USING utf8mb4) COLLATE
-- utf8mb4_unicode_ci: a user variable carries the connection collation, and
-- comparing it with the utf8mb4_unicode_ci column fails with "Illegal mix of
-- collations" when the connection uses another one (utf8mb4_0900_ai_ci is the
-- MySQL 8 default, utf8mb4_general_ci the MariaDB one). The column side is
-- left alone, so the index on customers (plan_type, id) is still used.
--
-- Which Query 2 the job runs: query2_per_customer (db_connection.SYNC_QUERY).
-- query2 below is the reference it must match row for row (tests/test_sql.py
-- compares them); it ranks every view in the window, so its cost grows with
-- page views. query2_per_customer takes each customer's newest view in the
-- window with one dive into page_views (customer_id, viewed_at, id), so its
-- cost grows with customers: on 100,000 customers it streams its first row at
-- once and all of them in about 0.5 s, where query2 sorts 1M to 3M views for
-- 5 to 13 s before its first row (README, Performance).
--
-- Valid on MySQL 8.0+ and MariaDB 10.6+ (no LATERAL, which MariaDB lacks).
-- =============================================================================

SET @plan_type = 'pro';
SET @lookback_days = 7;

-- name: query1
-- Every page view in the window for customers on @plan_type, ranked per
-- customer from newest (rank 1) to oldest. Ties on viewed_at go to the
-- higher page view id. Useful to see why Query 2 picks the row it picks.
SELECT
    pv.customer_id,
    c.email,
    c.plan_type,
    pv.id AS page_view_id,
    pv.page,
    pv.device,
    pv.location,
    pv.viewed_at,
    ROW_NUMBER() OVER (
        PARTITION BY pv.customer_id
        ORDER BY pv.viewed_at DESC, pv.id DESC
    ) AS view_rank
FROM customers AS c
JOIN page_views AS pv
    ON pv.customer_id = c.id
WHERE c.plan_type = CONVERT(@plan_type USING utf8mb4) COLLATE utf8mb4_unicode_ci
  AND pv.viewed_at >= UTC_TIMESTAMP() - INTERVAL @lookback_days DAY
ORDER BY pv.customer_id, view_rank;

-- name: query2
-- The sync set: one row per customer on @plan_type whose latest page view is
-- within the last @lookback_days days, carrying that latest view. Customers
-- with no view in the window are absent. Ties on viewed_at go to the higher
-- page view id so the result is deterministic.
-- The reference: the job runs query2_per_customer, which returns the same rows.
WITH ranked_views AS (
    SELECT
        c.id AS customer_id,
        c.email,
        c.first_name,
        c.last_name,
        c.plan_type,
        pv.id AS page_view_id,
        pv.page,
        pv.device,
        pv.location,
        pv.viewed_at,
        ROW_NUMBER() OVER (
            PARTITION BY pv.customer_id
            ORDER BY pv.viewed_at DESC, pv.id DESC
        ) AS view_rank
    FROM customers AS c
    JOIN page_views AS pv
        ON pv.customer_id = c.id
    WHERE c.plan_type = CONVERT(@plan_type USING utf8mb4) COLLATE utf8mb4_unicode_ci
      AND pv.viewed_at >= UTC_TIMESTAMP() - INTERVAL @lookback_days DAY
)
SELECT
    customer_id,
    email,
    first_name,
    last_name,
    plan_type,
    page_view_id,
    page,
    device,
    location,
    viewed_at
FROM ranked_views
WHERE view_rank = 1
ORDER BY customer_id;

-- name: query2_per_customer
-- Query 2 as the job runs it: the same rows in the same order, at a cost that
-- grows with the customers on @plan_type rather than with their page views.
-- For each customer the subquery walks page_views (customer_id, viewed_at, id)
-- backwards from the customer's newest view and stops at the first row inside
-- the window: ORDER BY ... DESC LIMIT 1 in index order, so no view is ranked
-- and nothing is sorted. The same order as query2's ROW_NUMBER, so a tie on
-- viewed_at still goes to the higher page view id. Only the winner's id comes
-- out of the subquery; its other columns are read by primary key.
-- MariaDB merges the CTE into the outer query and streams rows in customer id
-- order as it goes; MySQL 8 materialises it first (a subquery in a derived
-- table's select list keeps it from merging), still one dive per customer.
WITH latest_views AS (
    SELECT
        c.id AS customer_id,
        c.email,
        c.first_name,
        c.last_name,
        c.plan_type,
        (
            SELECT pv.id
            FROM page_views AS pv
            WHERE pv.customer_id = c.id
              AND pv.viewed_at >= UTC_TIMESTAMP() - INTERVAL @lookback_days DAY
            ORDER BY pv.viewed_at DESC, pv.id DESC
            LIMIT 1
        ) AS page_view_id
    FROM customers AS c
    WHERE c.plan_type = CONVERT(@plan_type USING utf8mb4) COLLATE utf8mb4_unicode_ci
)
SELECT
    lv.customer_id,
    lv.email,
    lv.first_name,
    lv.last_name,
    lv.plan_type,
    pv.id AS page_view_id,
    pv.page,
    pv.device,
    pv.location,
    pv.viewed_at
FROM latest_views AS lv
JOIN page_views AS pv
    ON pv.id = lv.page_view_id
ORDER BY lv.customer_id;

-- name: query3
-- Summary per plan type (all plans, so @plan_type can be compared with the
-- rest): customers, all page views, page views in the window, customers
-- active in the window, and the latest page view time.
SELECT
    c.plan_type,
    COUNT(DISTINCT c.id) AS customers,
    COUNT(pv.id) AS views_total,
    COUNT(CASE
        WHEN pv.viewed_at >= UTC_TIMESTAMP() - INTERVAL @lookback_days DAY THEN pv.id
    END) AS views_in_window,
    COUNT(DISTINCT CASE
        WHEN pv.viewed_at >= UTC_TIMESTAMP() - INTERVAL @lookback_days DAY THEN pv.customer_id
    END) AS customers_active_in_window,
    MAX(pv.viewed_at) AS last_view_at
FROM customers AS c
LEFT JOIN page_views AS pv
    ON pv.customer_id = c.id
GROUP BY c.plan_type
ORDER BY c.plan_type;
