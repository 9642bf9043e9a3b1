//! Shared scalars (0-d `SharedArray`s, atomic and `Locked`) across real forked processes.

mod common;

use std::sync::atomic::Ordering;

use common::spawn;
use forkpool_shm::{Locked, SharedArray};

#[test]
fn eight_processes_count_with_a_lock_free_value() {
    let counter = SharedArray::<_>::full(&[], 0u64).unwrap();
    common::in_children_times(8, 10_000, || {
        counter.fetch_add(0, 1, Ordering::Relaxed);
        Ok::<_, String>(())
    });
    assert_eq!(counter.get(0), 80_000);
}

#[test]
fn float_values_add_atomically_across_processes() {
    let total = SharedArray::<_>::full(&[], 0.0f64).unwrap();
    common::in_children_times(4, 1000, || {
        total.fetch_add(0, 0.5, Ordering::AcqRel);
        Ok::<_, String>(())
    });
    assert_eq!(total.get(0), 2000.0); // exact: halves sum exactly in f64
}

#[test]
fn locked_values_serialise_read_modify_write() {
    let value = SharedArray::<_, Locked>::full(&[], 1u32).unwrap();
    common::in_children_times(4, 5, || {
        value.with_lock(|value| value[0] = value[0].wrapping_mul(3))
    });
    assert_eq!(value.with_lock(|value| value[0]).unwrap(), 3u32.pow(20));
}

#[test]
fn a_flag_set_by_a_child_is_seen_by_the_parent() {
    let flag = SharedArray::<_>::full(&[], 0u8).unwrap();
    assert_eq!(
        format!("{flag:?}"),
        r#"SharedArray { elem: "u8", mode: "atomic", shape: [], backing: "anonymous" }"#
    );
    spawn(|| {
        flag.set(0, 1);
        Ok(())
    })
    .join();
    assert_eq!(flag.get(0), 1);
    assert_eq!(flag.swap(0, 0, Ordering::AcqRel), 1);
}
