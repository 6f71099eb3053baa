-- The sync state and run history in MySQL (STATE_STORE=mysql), for a DBA who grants the
-- job only SELECT, INSERT, UPDATE, DELETE on the state database: run this once in that
-- database (mysql STATE_DB < sql/state_schema.sql). A job whose account may create
-- tables creates them itself on first use, from this file.
-- Ids are text (a BIGINT UNSIGNED customer id reaches 20 digits), compared byte for byte.

CREATE TABLE IF NOT EXISTS meta (
    `key` VARCHAR(64) NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS users (
    customer_id VARCHAR(24) NOT NULL PRIMARY KEY,
    fingerprint VARCHAR(255) NULL,
    email TEXT NULL,
    profile MEDIUMTEXT NULL,
    in_segment TINYINT NOT NULL DEFAULT 0,
    accepted_at VARCHAR(20) NOT NULL,
    KEY users_in_segment (in_segment)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The newest event Iterable accepted for each customer.
CREATE TABLE IF NOT EXISTS events (
    customer_id VARCHAR(24) NOT NULL PRIMARY KEY,
    event_id VARCHAR(255) NOT NULL,
    accepted_at VARCHAR(20) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS rejections (
    customer_id VARCHAR(24) NOT NULL PRIMARY KEY,
    fingerprint VARCHAR(255) NOT NULL,
    reason TEXT NOT NULL,
    rejected_at VARCHAR(20) NOT NULL,
    first_rejected_at VARCHAR(20) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS forgotten (
    customer_id VARCHAR(24) NOT NULL PRIMARY KEY,
    email TEXT NOT NULL,
    forgotten_at VARCHAR(20) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS unsure_moves (
    customer_id VARCHAR(24) NOT NULL PRIMARY KEY,
    email TEXT NOT NULL,
    started_at VARCHAR(20) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS list_members (
    list_id VARCHAR(24) NOT NULL,
    customer_id VARCHAR(24) NOT NULL,
    identifier TEXT NOT NULL,
    PRIMARY KEY (list_id, customer_id),
    KEY list_members_customer (customer_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The customers of the run in progress, emptied as each run starts (the job needs no
-- CREATE TEMPORARY TABLES privilege).
CREATE TABLE IF NOT EXISTS seen (
    customer_id VARCHAR(24) NOT NULL PRIMARY KEY
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Run history: one row per run, one per row of its results file.
CREATE TABLE IF NOT EXISTS sync_runs (
    run_id VARCHAR(64) NOT NULL PRIMARY KEY,
    started_at DATETIME NOT NULL,
    finished_at DATETIME NULL,
    exit_code SMALLINT NULL,
    mode VARCHAR(16) NULL,
    dry_run TINYINT NOT NULL DEFAULT 0,
    total INT NULL,
    succeeded INT NULL,
    failed INT NULL,
    skipped INT NULL,
    outstanding INT NULL,
    left_segment INT NULL,
    aborted TEXT NULL,
    version VARCHAR(32) NULL,
    KEY sync_runs_started_at (started_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS sync_results (
    run_id VARCHAR(64) NOT NULL,
    result_index INT NOT NULL,
    customer_id VARCHAR(24) NULL,
    email TEXT NULL,
    segment VARCHAR(16) NULL,
    status VARCHAR(16) NOT NULL,
    reason VARCHAR(255) NULL,
    detail TEXT NULL,
    outstanding TINYINT NOT NULL DEFAULT 0,
    failing_since DATETIME NULL,
    user_update_status SMALLINT NULL,
    event_track_status SMALLINT NULL,
    update_email_status SMALLINT NULL,
    PRIMARY KEY (run_id, result_index),
    KEY sync_results_customer (customer_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT IGNORE INTO meta (`key`, value) VALUES ('schema_version', '3');
