"""The plumbing the framework's modules share, none of it about learning:
errors and exit statuses, all-or-nothing writes, usable folders and
records, the sweep lock, a run's backup and resume, fault points for the
tests, quiet output and the stderr filter, progress lines, XLA's
compilation cache and the compiled steps reused across trials."""
