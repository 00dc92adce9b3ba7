"""What tests and benchmarks share to drive the sandbox from outside: throw-away services, load, faults, workers."""
