//! Differential test of the `.npy` reader against numpy itself.
//!
//! numpy writes a corpus of files (every dtype kind, both byte orders, C and
//! Fortran order, format versions 1.0 to 3.0); this test adds hand-written
//! headers and thousands of mutants of numpy's own headers (one byte
//! replaced, inserted or deleted). numpy's `np.load` judges every file, then
//! this crate opens each one, and the two verdicts must agree:
//!
//! - numpy refuses: every element type refuses;
//! - numpy loads an array whose dtype this crate holds (little-endian
//!   `u8`..`f64`), in C order (or Fortran order with at most one axis longer
//!   than 1, the same bytes), with the data aligned to the element and
//!   exactly as long as the shape needs: it opens, with numpy's shape;
//! - numpy loads anything else (another dtype, big-endian, Fortran order,
//!   trailing bytes numpy ignores, more than 32 dimensions): it is refused
//!   with a message.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::python_numpy;
use forkpool_shm::{ArrayOptions, Atomic, ShmError};

/// numpy's verdict on one file.
#[derive(Debug, Clone)]
enum Verdict {
    Ok {
        descr: String,
        shape: Vec<usize>,
        fortran: bool,
        offset: u64,
        nbytes: u64,
    },
    /// Why (shown in a disagreement through `Debug`).
    #[expect(dead_code, reason = "read through Debug in the failure report")]
    Refused(String),
}

const JUDGE: &str = r#"
import sys, os, warnings, numpy as np
warnings.simplefilter('ignore')
out = []
for name in sorted(os.listdir(sys.argv[1])):
    path = os.path.join(sys.argv[1], name)
    try:
        a = np.load(path)
        with open(path, 'rb') as f:
            head = f.read(12)
        size = 2 if head[6] == 1 else 4
        offset = 8 + size + int.from_bytes(head[8:8 + size], 'little')
        fortran = a.flags.f_contiguous and not a.flags.c_contiguous
        shape_s = ','.join(str(d) for d in a.shape)
        out.append(f"{name}\tok\t{a.dtype.str}\t{shape_s}\t{int(fortran)}\t{offset}\t{a.nbytes}")
    except BaseException as e:
        msg = str(e).replace('\n', ' ').replace('\t', ' ')[:80]
        out.append(f"{name}\terr\t{type(e).__name__}: {msg}")
print('\n'.join(out))
"#;

/// Writes the numpy-made seed files into `dir`.
const SEEDS: &str = r#"
import sys, os, numpy as np
from numpy.lib import format as fmt
d = sys.argv[1]
dtypes = ['|u1', '<u2', '<u4', '<u8', '|i1', '<i2', '<i4', '<i8', '<f4', '<f8',
          '>f8', '>i4', '>u2', '|b1', '<f2', '<c16', '<c8', '|S2', '<U3', '<M8[ns]',
          [('x', '<f8'), ('y', '<i4')], ('<f8', (2,))]
shapes = [(), (3,), (2, 3), (0, 3), (2, 1, 2)]
n = 0
for i, dt in enumerate(dtypes):
    for shape in shapes:
        a = np.zeros(shape, dtype=dt)
        for order in 'CF':
            b = np.asarray(a, order=order)
            for version in [(1, 0), (2, 0), (3, 0)]:
                if version != (1, 0) and (order == 'F' or len(shape) != 2):
                    continue
                with open(os.path.join(d, f"seed-{n:04}.npy"), 'wb') as f:
                    fmt.write_array(f, b, version=version)
                n += 1
np.save(os.path.join(d, 'seed-obj.npy'), np.array([1, 'x'], dtype=object))
np.save(os.path.join(d, 'seed-fortran-big.npy'), np.asfortranarray(np.arange(6.0).reshape(2, 3)))
"#;

fn judge(dir: &Path) -> BTreeMap<String, Verdict> {
    let out = python_numpy(JUDGE, &[dir]);
    out.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let verdict = if f[1] == "ok" {
                Verdict::Ok {
                    descr: f[2].to_owned(),
                    shape: f[3]
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.parse().unwrap())
                        .collect(),
                    fortran: f[4] == "1",
                    offset: f[5].parse().unwrap(),
                    nbytes: f[6].parse().unwrap(),
                }
            } else {
                Verdict::Refused(f[2].to_owned())
            };
            (f[0].to_owned(), verdict)
        })
        .collect()
}

/// Opens `path` as every element type: the descr of the one that opened it
/// (and the shape), or every refusal's message.
fn ours(path: &Path) -> Result<(&'static str, Vec<usize>), Vec<String>> {
    fn one<T: forkpool_shm::Element>(path: &Path) -> Result<Vec<usize>, ShmError> {
        // SAFETY: a private file nobody changes while it is mapped.
        let array = unsafe {
            ArrayOptions::new()
                .read_only(true)
                .open_npy::<T, Atomic>(path)
        }?;
        Ok(array.shape().to_vec())
    }
    let mut errors = Vec::new();
    macro_rules! each {
        ($($t:ty),*) => {$(
            match one::<$t>(path) {
                Ok(shape) => return Ok((<$t as forkpool_shm::Element>::NPY_DESCR, shape)),
                Err(e) => errors.push(e.to_string()),
            }
        )*};
    }
    each!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);
    Err(errors)
}

const SUPPORTED: [&str; 10] = [
    "|u1", "<u2", "<u4", "<u8", "|i1", "<i2", "<i4", "<i8", "<f4", "<f8",
];

/// Whether this crate should open what numpy loaded.
fn should_open(verdict: &Verdict, file_len: u64) -> bool {
    let Verdict::Ok {
        descr,
        shape,
        fortran,
        offset,
        nbytes,
    } = verdict
    else {
        return false;
    };
    let size: u64 = match descr.get(2..).and_then(|s| s.parse().ok()) {
        Some(size) => size,
        None => return false,
    };
    SUPPORTED.contains(&descr.as_str())
        && (!fortran || shape.iter().filter(|&&d| d > 1).count() <= 1)
        && shape.len() <= 32
        && offset % size == 0
        && offset + nbytes == file_len
}

/// A format `version` file with header `text` and `data` zero bytes.
fn npy(version: u8, text: &[u8], data: usize) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(text);
    out.resize(out.len() + data, 0);
    out
}

/// Headers written by hand: forms numpy writes, forms it reads, and
/// malformed ones.
fn handmade() -> Vec<(u8, String, usize)> {
    let h = |shape: &str| format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
    let mut out = vec![
        (1, h("(3, 4)"), 96),
        (1, h("(3L, 4L)"), 96),
        (3, h("(3L, 4L)"), 96),
        (1, h("(00, 12)"), 0),
        (1, h("(012,)"), 96),
        (1, h("(1_2,)"), 96),
        (1, h("(+12,)"), 96),
        (1, h("(- 12,)"), 96),
        (1, h("(-1,)"), 96),
        (1, h("(True, 12)"), 96),
        (1, h("(12)"), 96),
        (1, h("[12]"), 96),
        (1, h("((12),)"), 96),
        (1, h("(12.0,)"), 96),
        (1, h("(0x0c,)"), 96),
        (1, h("(2**3,)"), 64),
        (1, h("(0, 4294967296, 4294967296)"), 0),
        (1, h("(0, 4294967296, 268435455)"), 0),
        (1, h("(0, 4294967296, 268435456)"), 0),
        (1, h("(9223372036854775807,)"), 0),
        (1, h("(0, 9223372036854775808)"), 0),
        (1, h(&format!("({})", "1,".repeat(33))), 8),
        (
            1,
            h(&format!("({}3{},)", "(".repeat(29), ")".repeat(29))),
            24,
        ),
        (
            1,
            h(&format!("({}3{},)", "(".repeat(40), ")".repeat(40))),
            24,
        ),
        (
            1,
            "{'descr': '<i4', 'descr': '<f8', 'fortran_order': False, 'shape': (12,), }".into(),
            96,
        ),
        (
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (12,), 'x': 1}".into(),
            96,
        ),
        (1, "{'descr': '<f8', 'fortran_order': False}".into(), 96),
        (
            1,
            "{'descr': '<f8', 'fortran_order': 0, 'shape': (12,)}".into(),
            96,
        ),
        (
            1,
            "{'descr': '<f8', 'fortran_order': True, 'shape': (3, 4)}".into(),
            96,
        ),
        (
            1,
            "{'descr': '<f8', 'fortran_order': True, 'shape': (1, 12)}".into(),
            96,
        ),
        (
            1,
            "{'descr': \"<f8\", \"fortran_order\": False, 'shape': (12,)}".into(),
            96,
        ),
        (
            1,
            "  {'descr': '<f8', 'fortran_order': False, 'shape': (12,)}\r\n".into(),
            96,
        ),
        (
            1,
            "{'descr': '<f8',\t'fortran_order': False,\n'shape': (12,)}\x0c\n".into(),
            96,
        ),
        (
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (12,)} x".into(),
            96,
        ),
        (
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (12,)}\0".into(),
            96,
        ),
        (
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (12,),,}".into(),
            96,
        ),
        (
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (12,)".into(),
            96,
        ),
        (
            1,
            "{'descr': '<f8' 'fortran_order': False, 'shape': (12,)}".into(),
            96,
        ),
        (1, "['descr', '<f8']".into(), 96),
        (1, String::new(), 96),
        (
            1,
            "{'descr': True, 'fortran_order': False, 'shape': (12,)}".into(),
            96,
        ),
        (
            1,
            "{'descr': None, 'fortran_order': False, 'shape': (12,)}".into(),
            96,
        ),
        (
            1,
            "{'descr': [('x', '<f8')], 'fortran_order': False, 'shape': (12,)}".into(),
            96,
        ),
        (
            1,
            "{'descr': ('<f8', (2,)), 'fortran_order': False, 'shape': (6,)}".into(),
            96,
        ),
        (
            1,
            "{'descr': '|O', 'fortran_order': False, 'shape': (12,)}".into(),
            96,
        ),
        (
            2,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (12,)}".into(),
            96,
        ),
        (
            3,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (12,)}".into(),
            96,
        ),
    ];
    for descr in [
        "<d", "d", "float64", "double", "=f8", "|f8", "f 8", "<f08", "<f+8", "<float64", "f8 ",
        "l", "<l", "L", "int", "uint", "B", "b", "b1", "?", "h", "<H", "i", "I", "q", "Q", "p",
        "P", "f", "e", "g", "u", "i3", "F8", "D", ">d", ">B", "=i4", "|i4",
    ] {
        out.push((
            1,
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (12,), }}"),
            96,
        ));
    }
    out
}

/// Whether the file's `'descr'` is a string numpy reads but never writes: a
/// leading repeat count or a backslash escape.
fn exotic_descr(file: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&file[..file.len().min(300)]);
    let Some(at) = text.find("'descr': '") else {
        return false;
    };
    let descr = &text[at + 10..];
    let descr = &descr[..descr.find('\'').unwrap_or(descr.len())];
    descr.contains('\\')
        || descr
            .trim_start_matches(['<', '>', '=', '|'])
            .starts_with(|c: char| c.is_ascii_digit())
}

/// The bytes that replace, or are inserted at, each position of a header.
const MUTATIONS: &[u8] = b" ()[]{},:'\"019-L\n\0x#\\T_.";

#[test]
fn this_reader_agrees_with_numpy_on_numpy_files_handmade_headers_and_mutants() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = dir.path().join("seeds");
    std::fs::create_dir(&seeds).unwrap();
    python_numpy(SEEDS, &[&seeds]);

    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let mut count = 0;
    let mut add = |bytes: &[u8]| {
        std::fs::write(corpus.join(format!("f{count:06}.npy")), bytes).unwrap();
        count += 1;
    };
    let mut seed_paths: Vec<PathBuf> = std::fs::read_dir(&seeds)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    seed_paths.sort();
    for path in &seed_paths {
        add(&std::fs::read(path).unwrap());
    }
    for (version, text, data) in handmade() {
        add(&npy(version, text.as_bytes(), data));
    }
    // Mutants of a few numpy-written headers: each byte of the dict (and
    // the final newline) replaced, preceded by, or deleted.
    for path in seed_paths.iter().skip(5).step_by(23).take(4) {
        let bytes = std::fs::read(path).unwrap();
        let prelude = if bytes[6] == 1 { 10 } else { 12 };
        let hlen = if bytes[6] == 1 {
            u16::from_le_bytes([bytes[8], bytes[9]]) as usize
        } else {
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize
        };
        let (text, data) = (&bytes[prelude..prelude + hlen], &bytes[prelude + hlen..]);
        let dict_end = text.iter().position(|&b| b == b'}').unwrap() + 1;
        let positions = (0..dict_end).chain([hlen - 1]);
        for at in positions {
            let mut variants: Vec<Vec<u8>> = Vec::new();
            let mut deleted = text.to_vec();
            deleted.remove(at);
            variants.push(deleted);
            for &m in MUTATIONS {
                let mut replaced = text.to_vec();
                replaced[at] = m;
                variants.push(replaced);
                let mut inserted = text.to_vec();
                inserted.insert(at, m);
                variants.push(inserted);
            }
            for variant in variants {
                let mut file = npy(bytes[6], &variant, 0);
                file.extend_from_slice(data);
                add(&file);
            }
        }
    }
    let total = count;

    let verdicts = judge(&corpus);
    assert_eq!(verdicts.len(), total, "numpy judged every file");
    let mut disagreements = Vec::new();
    let (mut opened, mut refused_both, mut exotic) = (0, 0, 0);
    for (name, verdict) in &verdicts {
        let path = corpus.join(name);
        let file_len = std::fs::metadata(&path).unwrap().len();
        let mine = ours(&path);
        let expected_open = should_open(verdict, file_len);
        match (&mine, verdict) {
            (
                Ok((descr, shape)),
                Verdict::Ok {
                    descr: d, shape: s, ..
                },
            ) if expected_open && descr == d && shape == s => opened += 1,
            // Dtype strings numpy reads but never writes: a leading repeat
            // count ('1u1' is u1 with an extra axis of 1, which np.load
            // folds into the shape) or an escaped type character ('|\\1'
            // is chr(1), numpy's type number for int8).
            (Err(_), Verdict::Ok { .. }) if exotic_descr(&std::fs::read(&path).unwrap()) => {
                exotic += 1;
            }
            (Err(errors), _) if !expected_open => {
                // Every refusal says something, briefly.
                assert!(
                    errors.iter().all(|e| !e.is_empty() && e.len() < 2_000),
                    "{errors:?}"
                );
                refused_both += 1;
            }
            _ => {
                let text = std::fs::read(&path).unwrap();
                let header = String::from_utf8_lossy(&text[..text.len().min(140)]).into_owned();
                disagreements.push(format!(
                    "{name}: numpy {verdict:?}, ours {:?}\n    {header:?}",
                    mine.as_ref().map_err(|e| e.last().cloned())
                ));
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {total} files judged differently:\n{}",
        disagreements.len(),
        disagreements[..disagreements.len().min(30)].join("\n")
    );
    // The corpus exercises both sides.
    assert!(
        opened > 100 && refused_both > 1000 && exotic < 50,
        "{opened} opened, {refused_both} refused, {exotic} exotic dtype strings"
    );
}
