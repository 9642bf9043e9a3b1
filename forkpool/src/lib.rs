//! forkpool: a fork-based process pool (work in progress).
