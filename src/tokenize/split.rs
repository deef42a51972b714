//! Finding a tokenizer's added tokens in a text, exactly as HF `tokenizers` does
//! (`AddedVocabulary::find_matches`), but without building a `NormalizedString` (which costs
//! 16 bytes of alignment per byte of text: about 30 µs for a 10 kB chat, most of a warm
//! request).
//!
//! Semantics reproduced: leftmost-longest matching (aho-corasick `LeftmostLongest`); matching
//! resumes at the end of the matched text; a special token is skipped when
//! `encode_special_tokens` is on; `lstrip` extends a match left over the whitespace before
//! it (never into the previous match); `rstrip` extends it right over the whitespace after
//! it. `single_word` tokens are not supported (the caller encodes whole texts for tokenizers
//! that have one). The unit tests compare the result with `extract_and_normalize` itself.

use std::ops::Range;

use tokenizers::AddedToken;

/// One part of a text: a range of text between added tokens, or an added token's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Text(Range<usize>),
    Token(u32),
}

#[derive(Debug)]
struct MatchToken {
    id: u32,
    lstrip: bool,
    rstrip: bool,
    /// A special token while `encode_special_tokens` is on: found, then ignored.
    skip: bool,
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    token: Option<u32>,
}

/// A byte trie over a set of added tokens' contents.
#[derive(Debug)]
pub(crate) struct Matcher {
    /// Node index for each first byte; 0 means no token starts with it.
    root: Box<[u32; 256]>,
    /// `nodes[0]` is unused (0 is the "none" marker in `root`).
    nodes: Vec<Node>,
    tokens: Vec<MatchToken>,
}

impl Matcher {
    /// `tokens` are `(id, token)`; `encode_special_tokens` as the tokenizer has it.
    pub(crate) fn new<'a>(
        tokens: impl IntoIterator<Item = (u32, &'a AddedToken)>,
        encode_special_tokens: bool,
    ) -> Self {
        let mut m = Matcher {
            root: Box::new([0; 256]),
            nodes: vec![Node::default()],
            tokens: Vec::new(),
        };
        for (id, t) in tokens {
            let bytes = t.content.as_bytes();
            let Some((&first, rest)) = bytes.split_first() else {
                continue; // tokenizers ignores empty tokens too
            };
            let mut node = match m.root[usize::from(first)] {
                0 => {
                    m.nodes.push(Node::default());
                    let n = (m.nodes.len() - 1) as u32;
                    m.root[usize::from(first)] = n;
                    n
                }
                n => n,
            };
            for &b in rest {
                let children = &m.nodes[node as usize].children;
                node = match children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => children[i].1,
                    Err(i) => {
                        let n = m.nodes.len() as u32;
                        m.nodes[node as usize].children.insert(i, (b, n));
                        m.nodes.push(Node::default());
                        n
                    }
                };
            }
            // Two tokens with the same content: the trie keeps the first, as aho-corasick
            // reports the first pattern of equal matches.
            if m.nodes[node as usize].token.is_none() {
                m.nodes[node as usize].token = Some(m.tokens.len() as u32);
                m.tokens.push(MatchToken {
                    id,
                    lstrip: t.lstrip,
                    rstrip: t.rstrip,
                    skip: encode_special_tokens && t.special,
                });
            }
        }
        m
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The longest token starting at `at`: `(token index, end)`.
    fn longest_at(&self, bytes: &[u8], at: usize) -> Option<(u32, usize)> {
        let mut node = self.root[usize::from(bytes[at])];
        if node == 0 {
            return None;
        }
        let mut best = self.nodes[node as usize].token.map(|t| (t, at + 1));
        for (j, &b) in bytes.iter().enumerate().skip(at + 1) {
            let children = &self.nodes[node as usize].children;
            match children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => node = children[i].1,
                Err(_) => break,
            }
            if let Some(t) = self.nodes[node as usize].token {
                best = Some((t, j + 1));
            }
        }
        best
    }

    /// Splits `text[range]` into segments (non-empty text ranges, in `text`'s offsets, and
    /// token ids), in order.
    pub(crate) fn split(&self, text: &str, range: Range<usize>, emit: &mut dyn FnMut(Segment)) {
        let s = &text[range.clone()];
        let bytes = s.as_bytes();
        let base = range.start;
        // End of the last emitted token (HF's `start_offset`).
        let mut done = 0;
        let mut i = 0;
        while i < bytes.len() {
            let Some((t, end)) = self.longest_at(bytes, i) else {
                i += 1;
                continue;
            };
            let token = &self.tokens[t as usize];
            let (mut start, mut stop) = (i, end);
            i = end;
            if token.skip {
                continue;
            }
            if token.lstrip {
                let trimmed = s[..start].trim_end_matches(char::is_whitespace).len();
                start = trimmed.max(done);
            }
            if token.rstrip {
                stop =
                    end + (s[end..].len() - s[end..].trim_start_matches(char::is_whitespace).len());
            }
            if done < start {
                emit(Segment::Text(base + done..base + start));
            }
            emit(Segment::Token(token.id));
            done = stop;
        }
        if done < bytes.len() {
            emit(Segment::Text(base + done..base + bytes.len()));
        }
    }
}
