//! Runs the real `demos` binary and reads what it printed.

#![allow(dead_code, unreachable_pub)]

use std::process::{Command, Output};

/// The outcome of one run of the binary.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `demos` with `args` and returns what it printed.
pub fn demos(args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_demos"))
        .args(args)
        .output()
        .expect("the demos binary runs");
    Run {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

impl Run {
    /// Asserts the run succeeded, showing its output if not.
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.ok,
            "demo failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The `verified: ...` line.
    pub fn verified(&self) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("verified: "))
            .unwrap_or_else(|| panic!("no verified line in:\n{}", self.stdout))
    }

    /// The value printed for `label` by a `fact` line.
    pub fn fact(&self, label: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| {
                let l = l.trim_start();
                l.strip_prefix(label)
                    .filter(|rest| rest.starts_with(' '))
                    .map(str::trim)
            })
            .unwrap_or_else(|| panic!("no `{label}` line in:\n{}", self.stdout))
    }

    /// The multiple of the array in a fact printed as `"... = 1.000x the
    /// array"` (such as `array pages, summed PSS`).
    pub fn times_the_array(&self, label: &str) -> f64 {
        let value = self.fact(label);
        value
            .rsplit("= ")
            .next()
            .and_then(|r| r.strip_suffix("x the array"))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("`{label}` is not a multiple of the array: {value}"))
    }

    /// The rows of the memory table that follows `title`: (pid, role, [RSS, PSS, shared, private] in bytes).
    pub fn memory_table(&self, title: &str) -> Vec<(i64, String, [u64; 4])> {
        let mut lines = self.stdout.lines().skip_while(|l| !l.starts_with(title));
        assert!(
            lines.next().is_some(),
            "no table `{title}` in:\n{}",
            self.stdout
        );
        let header = lines.next().expect("a header");
        for col in ["pid", "role", "RSS", "PSS", "shared", "private"] {
            assert!(header.contains(col), "header without {col}: {header}");
        }
        let mut rows = Vec::new();
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            // pid role... then four sizes of two words each ("12.0 MiB").
            if words.len() < 9 {
                break;
            }
            let sizes: Vec<u64> = words[words.len() - 8..]
                .chunks(2)
                .map(|c| parse_size(c[0], c[1]))
                .collect();
            let (pid, role) = match words[0].parse::<i64>() {
                Ok(pid) => (pid, words[1..words.len() - 8].join(" ")),
                Err(_) => (0, words[..words.len() - 8].join(" ")),
            };
            rows.push((pid, role, [sizes[0], sizes[1], sizes[2], sizes[3]]));
            if pid == 0 {
                break; // the total line ends the table
            }
        }
        rows
    }
}

/// Parses "12.5" "MiB" into bytes.
pub fn parse_size(number: &str, unit: &str) -> u64 {
    let n: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {number}"));
    let scale = match unit {
        "B" => 1u64,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => panic!("unknown unit {other}"),
    };
    (n * scale as f64) as u64
}
