"""Outside test suites run against distrib (not part of ``./run test``)."""
