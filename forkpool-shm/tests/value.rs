//! Shared scalars (`SharedValue`, `LockedValue`) across real forked processes.

mod common;

use std::sync::atomic::Ordering;

use common::spawn;
use forkpool_shm::{LockedValue, SharedValue};

#[test]
fn eight_processes_count_with_a_lock_free_value() {
    let counter = SharedValue::new(0u64).unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| {
            spawn(|| {
                for _ in 0..10_000 {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    children.into_iter().for_each(common::Child::join);
    assert_eq!(counter.get(), 80_000);
}

#[test]
fn float_values_add_atomically_across_processes() {
    let total = SharedValue::new(0.0f64).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            spawn(|| {
                for _ in 0..1000 {
                    total.fetch_add(0.5, Ordering::AcqRel);
                }
                Ok(())
            })
        })
        .collect();
    children.into_iter().for_each(common::Child::join);
    assert_eq!(total.get(), 2000.0); // exact: halves sum exactly in f64
}

#[test]
fn locked_values_serialise_read_modify_write() {
    let value = LockedValue::new(1u32).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            spawn(|| {
                for _ in 0..5 {
                    value
                        .with_lock(|value| *value = value.wrapping_mul(3))
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    children.into_iter().for_each(common::Child::join);
    assert_eq!(value.with_lock(|value| *value).unwrap(), 3u32.pow(20));
}

#[test]
fn a_flag_set_by_a_child_is_seen_by_the_parent() {
    let flag = SharedValue::new(0u8).unwrap();
    assert_eq!(format!("{flag:?}"), "SharedValue(0)");
    spawn(|| {
        flag.set(1);
        Ok(())
    })
    .join();
    assert_eq!(flag.get(), 1);
    assert_eq!(flag.swap(0, Ordering::AcqRel), 1);
}
