"""`svdpipe simulate` and `svdpipe capacity`: the real planner on a virtual clock (clock, costs, service,
workload, run, validate, capacity, cli). The event loop is pure Python: no Ray, no torch."""
