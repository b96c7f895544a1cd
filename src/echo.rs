//! The built-in echo agent's tokenizer.
//!
//! The reply is the prompt verbatim, streamed one token per word with the
//! whitespace that follows it; whitespace before the first word belongs to
//! the first token, so the tokens always concatenate to the prompt (the
//! Python original's `\s*\S+\s*|\s+`).

/// Byte length of the first token of `s` (0 only when `s` is empty).
pub fn first_token_len(s: &str) -> usize {
    let mut chars = s.char_indices().peekable();
    // Leading whitespace, then the word, then the whitespace after it.
    for want_space in [true, false, true] {
        while let Some(&(_, c)) = chars.peek() {
            if c.is_whitespace() != want_space {
                break;
            }
            chars.next();
        }
    }
    chars.peek().map_or(s.len(), |&(i, _)| i)
}

/// Every token of `s`, in order.
pub fn tokens(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let n = first_token_len(rest);
        (n > 0).then(|| {
            let (token, tail) = rest.split_at(n);
            rest = tail;
            token
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<&str> {
        tokens(s).collect()
    }

    #[test]
    fn one_token_per_word_with_trailing_whitespace() {
        assert_eq!(toks("hello big world"), ["hello ", "big ", "world"]);
        assert_eq!(toks("  lead and trail  "), ["  lead ", "and ", "trail  "]);
        assert_eq!(toks("one"), ["one"]);
        assert_eq!(toks("   "), ["   "]);
        assert_eq!(toks("a\n\tb"), ["a\n\t", "b"]);
        assert_eq!(toks("héllo wörld"), ["héllo ", "wörld"]);
        assert!(toks("").is_empty());
    }

    #[test]
    fn tokens_concatenate_to_the_input() {
        for s in ["x", " a  b   c ", "\u{3000}全角 space", "tab\tsep\r\nlines"] {
            assert_eq!(toks(s).concat(), s);
        }
    }
}
