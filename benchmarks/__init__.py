"""Speed benchmarks: ``python -m benchmarks.<script> --help``. They print tables; nothing here is a test."""
