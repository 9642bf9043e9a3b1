//! The `locked` demo, run through the real binary at a small size.

mod common;

use common::demos;

/// The pid in "... worker 1234 ..." or "... (pid 1234)".
fn pid_after(text: &str, marker: &str) -> i64 {
    let rest = &text[text
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in `{text}`"))
        + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no pid after `{marker}` in `{text}`"))
}

#[test]
fn locked_counts_exactly_loses_updates_without_and_survives_a_dead_holder() {
    let run = demos(&["locked", "--rounds", "20000", "--processes", "2"]);
    run.assert_ok();
    let total = 20_000 * 32 * 2;

    // Without the lock: updates lost, and the count says how many.
    let racy = run.fact("counted");
    let (counted, lost) = racy
        .split_once(&format!(" of {total}: "))
        .unwrap_or_else(|| panic!("unexpected count line `{racy}`"));
    let counted: u64 = counted.parse().unwrap();
    let lost: u64 = lost.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(counted + lost, total, "{racy}");
    assert!(
        lost > 0,
        "two workers without a lock lost no update: {racy}"
    );

    // With the lock (and with atomics): exact.
    let verified = run.verified();
    assert!(
        verified.starts_with(&format!(
            "with the lock {total} of {total} counted (exact), atomic exact, {lost} updates lost"
        )),
        "{verified}"
    );
    assert!(
        run.stdout
            .contains("rounds (0-d locked array) 40000 of 40000"),
        "{}",
        run.stdout
    );

    // The holder killed while holding the lock: named, replaced, reported
    // by the next lock() with the data intact, and the work goes on.
    let failed = run.fact("the task failed");
    assert!(failed.contains("was killed by SIGKILL"), "{failed}");
    let dead = pid_after(failed, "worker ");
    let reported = run.fact("next lock() reported");
    assert_eq!(pid_after(reported, "OwnerDied (pid "), dead, "{reported}");
    assert!(
        reported.ends_with(&format!("counters all {}", 2 * 20_000 + 1)),
        "{reported}"
    );
    assert!(
        verified.contains(&format!(
            "worker {dead} killed by SIGKILL holding the lock, replaced, OwnerDied reported \
             with the data intact, work went on"
        )),
        "{verified}"
    );
    let table = run.memory_table("memory while the workers hold the counters");
    let roles: Vec<&str> = table.iter().map(|(_, role, _)| role.as_str()).collect();
    assert_eq!(roles, ["parent", "zygote", "worker 1", "worker 2", "total"]);
    let replacement = pid_after(run.fact("replacement worker"), "[");
    let workers: Vec<i64> = table[2..4].iter().map(|(pid, _, _)| *pid).collect();
    assert!(
        workers.contains(&replacement) && !workers.contains(&dead),
        "workers {workers:?}, dead {dead}, replacement {replacement}"
    );
}

#[test]
fn locked_refuses_bad_input_clearly() {
    let run = demos(&["locked", "--processes", "0"]);
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("need --rows, --cols, --processes and --rounds of at least 1"),
        "{}",
        run.stderr
    );
    let run = demos(&["locked", "--rows", "100000", "--cols", "100000"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("at most"), "{}", run.stderr);
}
