"""`make bench`: throughput, CPU and memory of the sync job against MariaDB and the sandbox."""
