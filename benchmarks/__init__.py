"""`make bench`: measurements that print tables (no asserts). Run one with
`python -m benchmarks NAME`; with no name, all of them."""
