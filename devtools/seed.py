"""Facts about sql/database_setup.sql's seed that the tests and the demo rely on."""

# Query 2 with plan 'pro' and 7 days: customer id -> the page view id that wins.
SEED_QUALIFYING = {1: 2, 2: 7, 3: 9, 5: 15, 6: 17, 8: 20, 9: 23}
# The pro customer whose email is malformed: read, never sent.
SEED_MALFORMED_EMAIL_CUSTOMER = 8
