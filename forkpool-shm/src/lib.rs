//! forkpool-shm: shared arrays for forked processes (work in progress).
