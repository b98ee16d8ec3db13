"""RQ worker classes, the reaper and dead letters."""
