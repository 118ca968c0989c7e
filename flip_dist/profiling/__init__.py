"""Where a step's time and memory go: phase timing, FLOP counts, device peaks, memory
estimates, the profile run and its report, and the naive reference step benchmarks compare against."""
