//! The `.npy` header: what `np.load(path, mmap_mode='r+')` expects in front of
//! the data, written and read here under numpy's own limits.
//!
//! Format (numpy's `numpy.lib.format`): the magic `\x93NUMPY`, a version
//! (1.0, 2.0 or 3.0), the header length (2 bytes for 1.0, 4 for 2.0 and
//! 3.0), then a Python dict literal such as
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }` padded with
//! spaces and a newline so the data starts at a multiple of 64 bytes.
//!
//! A `.npy` file comes from anywhere, so the header is untrusted input. numpy
//! reads it with `ast.literal_eval` after refusing headers over 10 000
//! characters (`max_header_size`). This reader keeps that limit (checked
//! before anything sized by the file is allocated: at most 40 000 bytes are
//! read, the most 10 000 UTF-8 characters can take) and parses only the
//! literal forms numpy writes (dicts, tuples, lists, strings, decimal
//! integers with Python 2's `L`, `True`, `False`, `None`) in one pass over
//! the text, with an explicit stack of at most [`MAX_DEPTH`] levels and
//! numbers of at most [`MAX_NUMBER_LEN`] characters: linear time, no
//! recursion on input. What numpy refuses is refused; what it accepts is
//! opened where the element type is supported, and named as numpy names it
//! otherwise (`tests/npy_differential.rs` checks both against numpy).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::dtype::{self, Dtype};
use crate::element::Element;
use crate::error::{ShmError, io_error};

/// numpy's `_MAX_HEADER_SIZE`: the longest header `np.load` reads by
/// default, in characters.
pub(crate) const MAX_HEADER_CHARS: usize = 10_000;

/// The most bytes [`MAX_HEADER_CHARS`] characters can take (UTF-8, format 3.0).
const MAX_HEADER_BYTES: usize = 4 * MAX_HEADER_CHARS;

/// The magic, the version and the longest length field.
const MAX_PRELUDE: usize = 12;

/// The most bytes of a file the header reader looks at.
pub(crate) const MAX_PREFIX: usize = MAX_PRELUDE + MAX_HEADER_BYTES;

/// The deepest nesting of brackets accepted. numpy's own headers nest two
/// levels (a dict holding a tuple), structured dtypes a few more; Python's
/// parser stops at 200.
pub(crate) const MAX_DEPTH: usize = 32;

/// The longest number accepted, in characters (underscores included): a
/// dimension numpy can hold has at most 19 digits.
pub(crate) const MAX_NUMBER_LEN: usize = 32;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// numpy's `ARRAY_ALIGN`: the data starts at a multiple of this.
const ARRAY_ALIGN: usize = 64;

/// numpy's `GROWTH_AXIS_MAX_DIGITS`: spaces reserved after the shape so the
/// first axis can grow in place.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// What a `.npy` header says, once parsed; the element type is checked
/// separately (see [`read_header`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// What the `'descr'` value means.
    pub(crate) dtype: Dtype,
    /// The `'descr'` value as written (shortened), for messages.
    pub(crate) descr_text: String,
    pub(crate) fortran_order: bool,
    pub(crate) shape: Vec<usize>,
    /// Where the data starts: the length of the whole header.
    pub(crate) data_offset: u64,
}

/// Why a header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// The file ends before the header does.
    Truncated {
        /// The file's length.
        file_len: u64,
        /// The length the header needs, if known yet.
        needed: Option<u64>,
    },
    /// Anything else, in words.
    Bad(String),
}

/// The bytes of a header for a C-order array of `shape` with elements
/// `descr`, exactly as numpy 2 writes it (format 1.0 unless the header needs
/// more than 65 535 bytes).
pub(crate) fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_repr = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_repr}, }}");
    if let Some(first) = dims.first() {
        dict.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(first.len())));
    }
    let hlen = dict.len() + 1;
    let (version, len_size) = if hlen + ARRAY_ALIGN < 1 << 16 {
        (1, 2)
    } else {
        (2, 4)
    };
    let pad = ARRAY_ALIGN - (MAGIC.len() + 2 + len_size + hlen) % ARRAY_ALIGN;
    let total = hlen + pad;
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + len_size + total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(total as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(total as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + pad, b' ');
    out.push(b'\n');
    out
}

/// Parses the header at the start of a file of `file_len` bytes, whose
/// first `min(file_len, MAX_PREFIX)` bytes are `prefix`.
pub(crate) fn parse(prefix: &[u8], file_len: u64) -> Result<Parsed, Problem> {
    let truncated = |needed| Problem::Truncated { file_len, needed };
    if prefix.len() < MAGIC.len() + 2 {
        if !MAGIC.starts_with(prefix) {
            return Err(not_npy());
        }
        return Err(truncated(None));
    }
    if &prefix[..MAGIC.len()] != MAGIC {
        return Err(not_npy());
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let len_size = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => {
            return Err(Problem::Bad(format!(
                "format version {major}.{minor} is not one numpy reads (1.0, 2.0 and 3.0 are); \
                 re-save it with np.save"
            )));
        }
    };
    let prelude = MAGIC.len() + 2 + len_size;
    let Some(len_bytes) = prefix.get(8..prelude) else {
        return Err(truncated(None));
    };
    let hlen = len_bytes
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let limit = if major == 3 {
        MAX_HEADER_BYTES
    } else {
        MAX_HEADER_CHARS
    };
    if hlen > limit {
        return Err(too_long(hlen, "bytes"));
    }
    let data_offset = (prelude + hlen) as u64;
    let Some(text) = prefix.get(prelude..prelude + hlen) else {
        return Err(truncated(Some(data_offset)));
    };
    if major == 3 {
        let text = std::str::from_utf8(text).map_err(|e| {
            Problem::Bad(format!(
                "the header is not valid UTF-8 (format 3.0 headers are UTF-8): {e}"
            ))
        })?;
        let chars = text.chars().count();
        if chars > MAX_HEADER_CHARS {
            return Err(too_long(chars, "characters"));
        }
    }
    let tree = Parser::new(text, major < 3).parse()?;
    interpret(&tree, text, data_offset)
}

fn not_npy() -> Problem {
    Problem::Bad(
        "it does not start with the .npy magic bytes \\x93NUMPY (for a raw file, as \
         np.memmap writes, use open_file with the shape)"
            .into(),
    )
}

fn too_long(len: usize, unit: &str) -> Problem {
    Problem::Bad(format!(
        "the header is {len} {unit} long, more than numpy's limit of {MAX_HEADER_CHARS} \
         characters (np.load refuses it too, unless max_header_size is raised); headers \
         numpy writes for plain arrays are under 200 bytes"
    ))
}

/// Reads and checks the header at the start of `file`, for elements `T`.
///
/// Reads at most [`MAX_PREFIX`] bytes, and never more than the file holds.
pub(crate) fn read_header<T: Element>(file: &File, path: &Path) -> Result<Parsed, ShmError> {
    let bad = |reason: String| ShmError::NpyHeader {
        path: path.to_owned(),
        reason,
    };
    let file_len = file
        .metadata()
        .map_err(io_error(path, "stat the file"))?
        .len();
    let want = file_len.min(MAX_PREFIX as u64) as usize;
    let mut prefix = vec![0u8; want];
    file.read_exact_at(&mut prefix, 0)
        .map_err(io_error(path, "read the .npy header"))?;
    let header = match parse(&prefix, file_len) {
        Ok(header) => header,
        Err(Problem::Truncated { file_len, needed }) => {
            let needs = match needed {
                Some(n) => format!(", the header alone needs {n}"),
                None => String::new(),
            };
            return Err(bad(format!(
                "the file ends inside the header (it is {file_len} bytes{needs}): it is truncated"
            )));
        }
        Err(Problem::Bad(reason)) => return Err(bad(reason)),
    };
    check_dtype::<T>(&header, path)?;
    if header.fortran_order && header.shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(bad(
            "the array is stored in Fortran (column-major) order; only C order is supported \
             (save np.ascontiguousarray(a) instead)"
                .into(),
        ));
    }
    Ok(header)
}

/// Checks that the header's dtype is `T`, or says what it is and what to do.
fn check_dtype<T: Element>(header: &Parsed, path: &Path) -> Result<(), ShmError> {
    if dtype::is::<T>(&header.dtype) {
        return Ok(());
    }
    let as_written = |numpy: &str| {
        if numpy.starts_with("the ") {
            numpy.to_owned()
        } else if header.descr_text.trim_matches(['\'', '"']) == numpy {
            format!("'{numpy}'")
        } else {
            format!("'{numpy}' (written {})", header.descr_text)
        }
    };
    let (found, hint) = match &header.dtype {
        Dtype::Supported(numpy) => (
            as_written(numpy),
            match dtype::rust_name(numpy) {
                Some(name) => format!("; open it as an array of {name}"),
                None => String::new(),
            },
        ),
        Dtype::BigEndian { numpy, little } => (
            as_written(numpy),
            format!(
                "; it is big-endian: convert it in numpy with a.astype('{little}') and save \
                 that"
            ),
        ),
        Dtype::Unsupported { numpy, what } => (as_written(numpy), format!("; {what}")),
        Dtype::Unknown => (
            header.descr_text.clone(),
            ", which is not a dtype this crate reads (numpy writes plain ones such as '<f8')"
                .to_owned(),
        ),
    };
    Err(ShmError::DtypeMismatch {
        path: path.to_owned(),
        expected: format!("{} ({})", T::NAME, T::NPY_DESCR),
        found,
        hint,
    })
}

/// A parsed literal: a flat arena of nodes (so dropping it never recurses).
struct Tree {
    nodes: Vec<Node>,
    root: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    True,
    False,
    None,
    Tuple,
    List,
    Dict,
}

struct Node {
    kind: Kind,
    /// The node's text: `[start, end)` of the header.
    start: usize,
    end: usize,
    /// Tuples and lists: the items; dicts: keys and values, alternating.
    children: Vec<usize>,
    /// Integers: the value (at most `MAX_NUMBER_LEN` characters, so it fits).
    int: i128,
}

/// An open bracket on the parser's stack.
struct Frame {
    node: usize,
    close: u8,
    saw_comma: bool,
    /// In a dict: a key was read, its value comes next.
    after_key: bool,
}

/// A one-pass parser of the Python literals numpy writes.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    /// Python 2 `L` suffixes on integers (numpy filters them for 1.0 and 2.0).
    allow_long: bool,
    nodes: Vec<Node>,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8], allow_long: bool) -> Self {
        Parser {
            s,
            pos: 0,
            allow_long,
            nodes: Vec::new(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    /// Skips white space and comments (`#` to the end of the line), as
    /// Python's tokenizer does between tokens.
    fn skip_space(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') => self.pos += 1,
                Some(b'#') => {
                    while !matches!(self.peek(), None | Some(b'\n' | b'\r')) {
                        self.pos += 1;
                    }
                }
                _ => return,
            }
        }
    }

    fn error(&self, what: &str) -> Problem {
        let at = self.pos.min(self.s.len());
        let end = (at + 24).min(self.s.len());
        let near: String = self.s[at..end].iter().map(|&b| b as char).collect();
        let near = if at == self.s.len() {
            "at its end".to_owned()
        } else {
            format!("at byte {at} ({:?}...)", near)
        };
        Problem::Bad(format!("bad header: {what} {near}"))
    }

    fn node(&mut self, kind: Kind, start: usize) -> usize {
        self.nodes.push(Node {
            kind,
            start,
            end: start,
            children: Vec::new(),
            int: 0,
        });
        self.nodes.len() - 1
    }

    fn parse(mut self) -> Result<Tree, Problem> {
        let mut stack: Vec<Frame> = Vec::new();
        let root = 'value: loop {
            // A value starts here.
            self.skip_space();
            let start = self.pos;
            let mut done = match self.peek() {
                Some(open @ (b'(' | b'[' | b'{')) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(self.error(&format!(
                            "brackets nested deeper than {MAX_DEPTH} levels (numpy writes 2)"
                        )));
                    }
                    let (kind, close) = match open {
                        b'(' => (Kind::Tuple, b')'),
                        b'[' => (Kind::List, b']'),
                        _ => (Kind::Dict, b'}'),
                    };
                    self.pos += 1;
                    let node = self.node(kind, start);
                    stack.push(Frame {
                        node,
                        close,
                        saw_comma: false,
                        after_key: false,
                    });
                    self.skip_space();
                    if self.peek() != Some(close) {
                        continue 'value;
                    }
                    self.pos += 1;
                    self.close(&mut stack)
                }
                Some(b'\'' | b'"') => self.string()?,
                Some(b'0'..=b'9' | b'+' | b'-') => self.number()?,
                Some(b'a'..=b'z' | b'A'..=b'Z' | b'_') => self.name()?,
                Some(_) => return Err(self.error("unexpected character")),
                None => return Err(self.error("a value is missing")),
            };
            // A value ended: attach it to the open bracket, then find what
            // follows it. Closing a bracket ends another value.
            loop {
                let Some(top) = stack.last_mut() else {
                    break 'value done;
                };
                self.nodes[top.node].children.push(done);
                if top.close == b'}' && !top.after_key {
                    top.after_key = true;
                    self.skip_space();
                    if self.peek() != Some(b':') {
                        return Err(self.error("expected ':' after a dict key"));
                    }
                    self.pos += 1;
                    continue 'value;
                }
                top.after_key = false;
                let close = top.close;
                self.skip_space();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        stack.last_mut().expect("a frame is open").saw_comma = true;
                        self.skip_space();
                        if self.peek() != Some(close) {
                            continue 'value;
                        }
                        self.pos += 1;
                        done = self.close(&mut stack);
                    }
                    Some(c) if c == close => {
                        self.pos += 1;
                        done = self.close(&mut stack);
                    }
                    None => {
                        return Err(self.error(&format!(
                            "the text ends before '{}' closes the bracket",
                            close as char
                        )));
                    }
                    _ => {
                        return Err(self.error(&format!(
                            "expected ',' or '{}' after a value",
                            close as char
                        )));
                    }
                }
            }
        };
        self.skip_space();
        if self.pos != self.s.len() {
            return Err(self.error("unexpected text after the header's dictionary"));
        }
        Ok(Tree {
            nodes: self.nodes,
            root,
        })
    }

    /// Pops the innermost bracket, just closed; returns the value it makes.
    fn close(&mut self, stack: &mut Vec<Frame>) -> usize {
        let frame = stack.pop().expect("a frame is open");
        let node = &mut self.nodes[frame.node];
        node.end = self.pos;
        // `(x)` is `x` in parentheses, not a tuple.
        if node.kind == Kind::Tuple && node.children.len() == 1 && !frame.saw_comma {
            return node.children[0];
        }
        frame.node
    }

    fn string(&mut self) -> Result<usize, Problem> {
        let start = self.pos;
        let quote = self.s[start];
        self.pos += 1;
        loop {
            match self.peek() {
                Some(c) if c == quote => break,
                Some(b'\\') => self.pos += 2,
                Some(b'\n' | b'\r') | None => {
                    self.pos = start;
                    return Err(self.error("a string is not closed on its line"));
                }
                Some(0) => return Err(self.error("a NUL byte")),
                Some(_) => self.pos += 1,
            }
        }
        self.pos += 1;
        let node = self.node(Kind::Str, start);
        self.nodes[node].end = self.pos;
        if let Some(b'\'' | b'"') = self.peek() {
            return Err(self.error("adjacent strings, which numpy never writes,"));
        }
        Ok(node)
    }

    fn number(&mut self) -> Result<usize, Problem> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if let Some(b'+' | b'-') = self.peek() {
            self.pos += 1;
            while let Some(b' ' | b'\t') = self.peek() {
                self.pos += 1;
            }
        }
        let digits_start = self.pos;
        while let Some(b'0'..=b'9' | b'_') = self.peek() {
            self.pos += 1;
            if self.pos - digits_start > MAX_NUMBER_LEN {
                self.pos = start;
                return Err(
                    self.error(&format!("a number longer than {MAX_NUMBER_LEN} characters"))
                );
            }
        }
        let digits = &self.s[digits_start..self.pos];
        let valid = !digits.is_empty()
            && digits[0] != b'_'
            && digits.last() != Some(&b'_')
            && !digits.windows(2).any(|w| w == b"__");
        if !valid {
            self.pos = start;
            return Err(self.error("a malformed number"));
        }
        let mut value: i128 = 0;
        let mut zeros_only = true;
        for &d in digits.iter().filter(|&&d| d != b'_') {
            value = value * 10 + i128::from(d - b'0');
            zeros_only &= d == b'0';
        }
        if digits[0] == b'0' && !zeros_only {
            self.pos = start;
            return Err(self.error("a number with a leading zero (Python refuses it)"));
        }
        let end = self.pos;
        if self.allow_long && self.peek() == Some(b'L') {
            self.pos += 1;
        }
        if let Some(c) = self.peek()
            && (c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        {
            return Err(
                self.error("a number that is not a decimal integer (numpy writes integers only)")
            );
        }
        let node = self.node(Kind::Int, start);
        self.nodes[node].end = end;
        self.nodes[node].int = if negative { -value } else { value };
        Ok(node)
    }

    fn name(&mut self) -> Result<usize, Problem> {
        let start = self.pos;
        while let Some(b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_') = self.peek() {
            self.pos += 1;
        }
        let kind = match &self.s[start..self.pos] {
            b"True" => Kind::True,
            b"False" => Kind::False,
            b"None" => Kind::None,
            _ => {
                self.pos = start;
                return Err(self.error(
                    "a name other than True, False or None (a header holds literals only)",
                ));
            }
        };
        let node = self.node(kind, start);
        self.nodes[node].end = self.pos;
        Ok(node)
    }
}

/// The text of `node`, shortened to at most 60 characters for messages.
fn excerpt(text: &[u8], node: &Node) -> String {
    let bytes = &text[node.start..node.end];
    let shown: String = bytes.iter().take(60).map(|&b| b as char).collect();
    if bytes.len() > 60 {
        format!("{shown}...")
    } else {
        shown
    }
}

/// The content of a string node (between its quotes, escapes as written).
fn str_content<'t>(text: &'t [u8], node: &Node) -> &'t [u8] {
    &text[node.start + 1..node.end - 1]
}

/// Checks the parsed dict the way `numpy.lib.format` does.
fn interpret(tree: &Tree, text: &[u8], data_offset: u64) -> Result<Parsed, Problem> {
    let bad = |reason: String| Err(Problem::Bad(reason));
    let root = &tree.nodes[tree.root];
    if root.kind != Kind::Dict {
        return bad(format!(
            "the header is {}, not a dictionary (numpy writes \
             {{'descr': ..., 'fortran_order': ..., 'shape': ...}})",
            excerpt(text, root)
        ));
    }
    // Later keys replace earlier ones, as in a Python dict literal.
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let mut unknown = Vec::new();
    for pair in root.children.chunks(2) {
        let (key, value) = (&tree.nodes[pair[0]], &tree.nodes[pair[1]]);
        let slot = match (key.kind, str_content(text, key)) {
            (Kind::Str, b"descr") => &mut descr,
            (Kind::Str, b"fortran_order") => &mut fortran,
            (Kind::Str, b"shape") => &mut shape,
            _ => {
                unknown.push(excerpt(text, key));
                continue;
            }
        };
        *slot = Some(value);
    }
    let missing: Vec<&str> = [
        ("'descr'", descr.is_none()),
        ("'fortran_order'", fortran.is_none()),
        ("'shape'", shape.is_none()),
    ]
    .into_iter()
    .filter_map(|(key, missing)| missing.then_some(key))
    .collect();
    let (Some(descr), Some(fortran), Some(shape), true) =
        (descr, fortran, shape, unknown.is_empty())
    else {
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("it lacks {}", missing.join(" and ")));
        }
        if !unknown.is_empty() {
            unknown.truncate(4);
            problems.push(format!("it has {} besides", unknown.join(", ")));
        }
        return bad(format!(
            "{} (numpy needs exactly the keys 'descr', 'fortran_order' and 'shape')",
            problems.join(", and ")
        ));
    };

    if shape.kind != Kind::Tuple {
        return bad(format!(
            "the shape is {}, not a tuple of integers",
            excerpt(text, shape)
        ));
    }
    let mut dims = Vec::with_capacity(shape.children.len());
    for &child in &shape.children {
        let dim = &tree.nodes[child];
        if dim.kind != Kind::Int {
            return bad(format!(
                "the shape {} holds {}, not an integer",
                excerpt(text, shape),
                excerpt(text, dim)
            ));
        }
        if dim.int < 0 {
            return bad(format!(
                "the shape {} has a negative dimension",
                excerpt(text, shape)
            ));
        }
        match usize::try_from(dim.int) {
            Ok(d) if d <= isize::MAX as usize => dims.push(d),
            _ => {
                return bad(format!(
                    "the shape {} has a dimension larger than numpy allows (2**63 - 1)",
                    excerpt(text, shape)
                ));
            }
        }
    }

    let fortran_order = match fortran.kind {
        Kind::True => true,
        Kind::False => false,
        _ => {
            return bad(format!(
                "fortran_order is {}, not True or False",
                excerpt(text, fortran)
            ));
        }
    };

    let descr_text = excerpt(text, descr);
    let dtype = match descr.kind {
        Kind::Str => {
            let content = str_content(text, descr);
            match std::str::from_utf8(content) {
                Ok(s) => dtype::parse(s),
                Err(_) => Dtype::Unknown,
            }
        }
        Kind::List => Dtype::Unsupported {
            numpy: format!("the structured dtype {descr_text}"),
            what: "structured (record) arrays are not supported; save each field as an array \
                   of its own",
        },
        Kind::Tuple => Dtype::Unsupported {
            numpy: format!("the subarray dtype {descr_text}"),
            what: "subarray dtypes are not supported; save an array of the base type, with \
                   the extra axes in its shape",
        },
        _ => Dtype::Unknown,
    };
    Ok(Parsed {
        dtype,
        descr_text,
        fortran_order,
        shape: dims,
        data_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(text: &str) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out
    }

    fn parse_text(text: &str) -> Result<Parsed, Problem> {
        let bytes = with_header(text);
        parse(&bytes, bytes.len() as u64)
    }

    fn reason(text: &str) -> String {
        match parse_text(text) {
            Err(Problem::Bad(reason)) => reason,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn writes_what_numpy_writes_and_reads_it_back() {
        let bytes = header_bytes("<f8", &[3, 4]);
        assert_eq!(bytes.len(), 128);
        assert!(bytes.starts_with(
            b"\x93NUMPY\x01\x00\x76\x00{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }"
        ));
        assert!(bytes.ends_with(b" \n"));
        let parsed = parse(&bytes, bytes.len() as u64 + 96).unwrap();
        assert_eq!(parsed.shape, [3, 4]);
        assert_eq!(parsed.dtype, Dtype::Supported("<f8"));
        assert!(!parsed.fortran_order);
        assert_eq!(parsed.data_offset, 128);
        for shape in [&[][..], &[7], &[0, 5], &[usize::MAX >> 1, 1]] {
            let bytes = header_bytes("|u1", shape);
            assert_eq!(bytes.len() % 64, 0);
            assert_eq!(parse(&bytes, bytes.len() as u64).unwrap().shape, shape);
        }
    }

    #[test]
    fn accepts_the_forms_numpy_writes_and_reads() {
        let ok = |t: &str| parse_text(t).unwrap_or_else(|e| panic!("{t:?}: {e:?}"));
        let p = ok("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }    \n");
        assert_eq!((p.dtype, p.shape), (Dtype::Supported("<i4"), vec![2, 3]));
        assert_eq!(
            ok("{'shape': (), 'descr': 'd', 'fortran_order': True}").shape,
            [] as [usize; 0]
        );
        assert_eq!(
            ok("{'descr':'<f8','fortran_order':False,'shape':(3L, 4L)}").shape,
            [3, 4]
        );
        assert_eq!(
            ok("{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": ((5),)}").shape,
            [5]
        );
        assert_eq!(ok("  {'descr': '<i4', 'descr': '<f8', 'fortran_order': False,\r\n 'shape': (1_2, +3, 00,)}\n\n").shape, [12, 3, 0]);
        assert_eq!(
            ok("{'descr': '<f8', 'fortran_order': False, 'shape': (12,)}").dtype,
            Dtype::Supported("<f8")
        );
        let record = ok(
            "{'descr': [('x', '<f8'), ('y', '<i4', (2,))], 'fortran_order': False, 'shape': (3,)}",
        );
        assert!(matches!(record.dtype, Dtype::Unsupported { .. }));
    }

    #[test]
    fn refuses_what_numpy_refuses_with_the_reason() {
        let cases = [
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': [3]}",
                "not a tuple",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3)}",
                "not a tuple",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (True, 2)}",
                "not an integer",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,)}",
                "negative",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (9223372036854775808,)}",
                "2**63",
            ),
            (
                "{'descr': '<f8', 'fortran_order': 0, 'shape': (3,)}",
                "not True or False",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False}",
                "it lacks 'shape'",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), 'x': 1}",
                "it has 'x' besides",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (012,)}",
                "leading zero",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (0x10,)}",
                "decimal integer",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3.0,)}",
                "decimal integer",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (2**3,)}",
                "expected ','",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3,),,}",
                "unexpected character",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3,)} x",
                "unexpected text",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3,)}\0",
                "unexpected text",
            ),
            (
                "{'descr': '<f\0', 'fortran_order': False, 'shape': (3,)}",
                "NUL",
            ),
            (
                "{'descr': '<f8, 'fortran_order': False, 'shape': (3,)}",
                "expected ','",
            ),
            (
                "{'descr': '<f8', 'fortran_order': false, 'shape': (3,)}",
                "a name other",
            ),
            ("['descr', '<f8']", "not a dictionary"),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3,)",
                "ends before '}'",
            ),
            ("", "missing"),
        ];
        for (text, expected) in cases {
            let reason = reason(text);
            assert!(reason.contains(expected), "{text:?}: {reason}");
        }
        let p = parse_text("{'descr': True, 'fortran_order': False, 'shape': (3,)}").unwrap();
        assert_eq!((p.dtype, p.descr_text.as_str()), (Dtype::Unknown, "True"));
    }

    #[test]
    fn refuses_versions_lengths_and_magic_numpy_refuses() {
        let good = header_bytes("<f8", &[2]);
        let mut v = good.clone();
        v[6] = 4;
        assert!(matches!(parse(&v, 200), Err(Problem::Bad(r)) if r.contains("version 4.0")));
        v[6] = 1;
        v[7] = 1;
        assert!(matches!(parse(&v, 200), Err(Problem::Bad(r)) if r.contains("version 1.1")));
        assert!(
            matches!(parse(b"\x93NUMPX\x01\x00", 8), Err(Problem::Bad(r)) if r.contains("magic"))
        );
        assert!(matches!(
            parse(b"\x93NU", 3),
            Err(Problem::Truncated { .. })
        ));
        assert!(matches!(
            parse(&good[..40], 40),
            Err(Problem::Truncated {
                needed: Some(128),
                ..
            })
        ));
        // 10 000 characters are fine, one more is not (numpy's max_header_size).
        let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (3,)}";
        let mut long = with_header(&format!("{dict}{}", " ".repeat(10_000 - dict.len())));
        assert_eq!(u16::from_le_bytes([long[8], long[9]]), 10_000);
        assert!(parse(&long, long.len() as u64).is_ok());
        long.push(b' ');
        long[8..10].copy_from_slice(&10_001u16.to_le_bytes());
        assert!(
            matches!(parse(&long, long.len() as u64), Err(Problem::Bad(r)) if r.contains("10001 bytes"))
        );
    }
}

/// Bounded property tests of the parser (a fuzz run that fits in CI):
/// whatever the bytes, `parse` returns, without panicking, and what it
/// accepts is consistent.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// The headers this crate writes (byte for byte numpy's, checked in
    /// `tests/npy.rs`), for a few dtypes and shapes.
    fn seeds() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for descr in ["<f8", "|u1", "<i4", ">f8", "|O", "<c16"] {
            for shape in [&[][..], &[3], &[2, 3], &[0, 3], &[1 << 40, 1 << 20]] {
                out.push(header_bytes(descr, shape));
            }
        }
        out
    }

    /// Checks what `parse` says about `bytes` as a whole file.
    fn check(bytes: &[u8]) {
        let prefix = &bytes[..bytes.len().min(MAX_PREFIX)];
        if let Ok(parsed) = parse(prefix, bytes.len() as u64) {
            assert!(parsed.data_offset <= bytes.len() as u64);
            assert!(parsed.shape.iter().all(|&d| d <= isize::MAX as usize));
            assert!(parsed.descr_text.len() <= 63);
        }
    }

    /// A mutation: replace, insert or delete one byte at a position.
    fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
        for &(at, kind, byte) in edits {
            let at = at % (bytes.len() + 1);
            match kind % 3 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]

        #[cfg_attr(miri, ignore = "proptest: thousands of cases, too slow under Miri")]
        fn any_bytes_after_the_magic_parse_or_fail_cleanly(
            version in 0u8..5,
            rest in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = b"\x93NUMPY".to_vec();
            bytes.extend_from_slice(&[version, 0]);
            bytes.extend_from_slice(&rest);
            check(&bytes);
        }

        #[test]

        #[cfg_attr(miri, ignore = "proptest: thousands of cases, too slow under Miri")]
        fn mutants_of_numpy_headers_parse_or_fail_cleanly(
            seed in 0usize..30,
            edits in proptest::collection::vec((0usize..200, any::<u8>(), any::<u8>()), 1..8),
            tokens in proptest::collection::vec(0usize..12, 0..4),
        ) {
            let mut bytes = seeds()[seed].clone();
            // Splice in whole tokens too: brackets, numbers, names.
            const TOKENS: [&[u8]; 12] = [
                b"(", b")", b"[[", b"]]", b"{", b"}", b"'x'", b"99999999999999999999",
                b"True", b"-", b"3L", b"#",
            ];
            for (i, &t) in tokens.iter().enumerate() {
                let at = 10 + (i * 17) % (bytes.len() - 10);
                bytes.splice(at..at, TOKENS[t].iter().copied());
            }
            check(&mutate(bytes, &edits));
        }

        #[test]

        #[cfg_attr(miri, ignore = "proptest: thousands of cases, too slow under Miri")]
        fn written_headers_read_back(
            dims in proptest::collection::vec(0usize..1 << 20, 0..6),
        ) {
            let bytes = header_bytes("<i2", &dims);
            let parsed = parse(&bytes, bytes.len() as u64).unwrap();
            prop_assert_eq!(parsed.shape, dims);
            prop_assert_eq!(parsed.data_offset, bytes.len() as u64);
            prop_assert_eq!(bytes.len() % ARRAY_ALIGN, 0);
        }
    }
}
