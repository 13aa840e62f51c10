//! The streaming form reader against the whole-body one: for any body (well formed,
//! mutated, random) cut into any chunks, `FormStream` fed chunk by chunk reaches exactly
//! the verdict of `multipart::parse` (the same form, or an error with the same code), and
//! the model it announces early is the model of the form — or the form is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{BOUNDARY, config, form, part};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use sg_inspect::multipart;
use sg_inspect::multipart_stream::{FormStream, Progress};

/// Boundaries, some of them overlapping themselves or the `--` before them.
fn boundary() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        BOUNDARY, "-", "--", "a", "-a-", "a-a", "x x", "=?", "B",
    ])
}

/// Pieces of forms, to build bodies close to the edge of the framing rules.
const PIECES: &[&str] = &[
    "--BoUnDaRy",
    "--BoUnDaRy--",
    "\r\n--BoUnDaRy",
    "\r\n--BoUnDaRy\r\n",
    "\r\n--BoUnDaRy--\r\n",
    "--BoUnDa",
    "\r\n--BoUnDaRyX",
    "\r\n",
    "\r\n\r\n",
    "\r",
    "\n",
    "-",
    "--",
    " ",
    "x",
    "\0\u{ff}",
    "Content-Disposition: form-data; name=\"model\"",
    "Content-Disposition: form-data; name=\"model\"\r\n\r\n",
    "Content-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n",
    "content-disposition: form-data; name=_charset_\r\n\r\n",
    "Content-Type: text/plain\r\n",
    "X-Pad: ppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp\r\n",
    "whisper-1",
    "m-\r-\r\n-",
];

fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::sample::select(PIECES).prop_map(|p| p.as_bytes().to_vec()),
        1 => Just(vec![b'y'; 1000]),
        1 => Just(vec![b'z'; 9000]),
    ]
}

/// A well formed form (or nearly: the parts are the ones readers differ on).
fn generated_form() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(part(), 0..5),
        prop::sample::select(vec!["\r\n", "\r\n", "\r\n", "\n"]),
        prop::sample::select(vec!["", "", "", "junk\r\n"]),
        prop::sample::select(vec!["", "", "", " "]),
        prop::bool::ANY,
    )
        .prop_map(|(parts, newline, preamble, padding, tail)| {
            let mut body = form(&parts, newline, preamble, padding);
            if !tail && body.ends_with(b"\r\n") {
                body.truncate(body.len() - 2);
            }
            body
        })
}

/// Part headers, valid.
const HEADERS: &[&str] = &[
    "Content-Disposition: form-data; name=\"model\"",
    "content-disposition: form-data; name=model\r\nContent-Type: text/plain; charset=utf-8",
    "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav",
    "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Transfer-Encoding: binary",
    "Content-Disposition: form-data; name=\"prompt\"",
    "Content-Disposition: form-data; name=\"language\"",
];

/// Part headers, invalid.
const BAD_HEADERS: &[&str] = &[
    "Content-Disposition: form-data; name=\"model\"; filename=\"m\"",
    "Content-Disposition: form-data; name=\"_charset_\"",
    "Content-Type: text/plain",
    "Content-Disposition: form-data; name=\"prompt\"\r\n folded",
    "",
];

/// Part contents a delimiter search could trip on, but that are content.
const CONTENTS: &[&str] = &[
    "",
    "whisper-1",
    " m ",
    "\r\n--BoUnDa",
    "-\r\n-\r",
    "\r\n-",
    "\r\n--",
    "\r",
    "--BoUnDa-Ry",
    "\r\n\r\n",
    "\r\n--BoUnDa\r\n--BoUnDaR",
];

/// Part contents that break the form (or the `model` field).
const BAD_CONTENTS: &[&str] = &[
    "\r\n--BoUnDaRy",
    "\r\n--BoUnDaRy--",
    "\r\n--BoUnDaRyX",
    "\r\n--BoUnDaRy \r\n",
    "a--BoUnDaRy",
    "--BoUnDaRy",
    "\u{ff}",
];

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::sample::select(CONTENTS).prop_map(|c| c.as_bytes().to_vec()),
        1 => prop::sample::select(BAD_CONTENTS).prop_map(|c| c.as_bytes().to_vec()),
        1 => prop::sample::select(vec![1023usize, 1024, 1025, 5000])
            .prop_map(|n| b"m-\r".iter().copied().cycle().take(n).collect()),
        1 => prop::collection::vec(any::<u8>(), 0..48),
        2 => prop::collection::vec(prop::sample::select(b"\r\n-BoUnDaRy x".to_vec()), 0..48),
    ]
}

fn rich_part() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    prop_oneof![
        8 => (prop::sample::select(HEADERS), content()),
        1 => (prop::sample::select(BAD_HEADERS), content()),
    ]
}

/// A form of parts that are mostly valid, with contents that test the delimiter search.
fn rich_form() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(rich_part(), 0..5),
        prop::sample::select(vec!["", "", "\r\n", "\r\n", "\r\n", "\r\n\r\n", "\r"]),
    )
        .prop_map(|(parts, tail)| {
            let mut b = Vec::new();
            for (headers, content) in parts {
                b.extend_from_slice(b"--BoUnDaRy\r\n");
                b.extend_from_slice(headers.as_bytes());
                b.extend_from_slice(b"\r\n\r\n");
                b.extend_from_slice(&content);
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"--BoUnDaRy--");
            b.extend_from_slice(tail.as_bytes());
            b
        })
}

#[derive(Debug, Clone)]
enum Mutation {
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Replace(Index, u8),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), piece()).prop_map(|(i, p)| Mutation::Insert(i, p)),
        (any::<Index>(), 1..4usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (
            any::<Index>(),
            prop::sample::select(b"\r\n- xBa\0".to_vec())
        )
            .prop_map(|(i, b)| Mutation::Replace(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |i: &Index, len: usize| i.index(len + 1);
        match m {
            Mutation::Insert(i, p) => {
                let i = at(i, body.len());
                body.splice(i..i, p.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = at(i, body.len());
                body.drain(i..(i + n).min(body.len()));
            }
            Mutation::Replace(i, b) => {
                if !body.is_empty() {
                    let i = i.index(body.len());
                    body[i] = *b;
                }
            }
            Mutation::Truncate(i) => body.truncate(at(i, body.len())),
        }
    }
    body
}

/// Bodies of every kind, with their boundary written as `BoUnDaRy`.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => generated_form(),
        5 => rich_form(),
        2 => (generated_form(), prop::collection::vec(mutation(), 1..4))
            .prop_map(|(b, m)| mutate(b, &m)),
        4 => (rich_form(), prop::collection::vec(mutation(), 1..4))
            .prop_map(|(b, m)| mutate(b, &m)),
        2 => (prop::bool::weighted(0.8), prop::collection::vec(piece(), 0..24)).prop_map(
            |(open, p)| {
                let start: &[u8] = if open { b"--BoUnDaRy\r\n" } else { b"" };
                [start, &p.concat()].concat()
            }
        ),
        1 => prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(prop::sample::select(b"\r\n-BoUnDaRy:; =\"model".to_vec()), 0..300),
        ],
    ]
}

/// How a body is cut into chunks.
#[derive(Debug, Clone)]
enum Chunking {
    /// One byte at a time.
    Bytes,
    /// Chunks of this size.
    Fixed(usize),
    /// At these points (repeated points give empty chunks).
    At(Vec<Index>),
    /// All at once.
    Whole,
}

fn chunking() -> impl Strategy<Value = Chunking> {
    prop_oneof![
        1 => Just(Chunking::Bytes),
        1 => (1..20usize).prop_map(Chunking::Fixed),
        3 => prop::collection::vec(any::<Index>(), 0..12).prop_map(Chunking::At),
        1 => Just(Chunking::Whole),
    ]
}

fn chunks<'a>(body: &'a [u8], how: &Chunking) -> Vec<&'a [u8]> {
    match how {
        Chunking::Bytes => body.chunks(1).collect(),
        Chunking::Fixed(n) => body.chunks(*n).collect(),
        Chunking::Whole => vec![body],
        Chunking::At(points) => {
            let mut cuts: Vec<usize> = points.iter().map(|i| i.index(body.len() + 1)).collect();
            cuts.sort_unstable();
            let mut out = Vec::new();
            let mut from = 0;
            for cut in cuts {
                out.push(&body[from..cut]);
                from = cut;
            }
            out.push(&body[from..]);
            out
        }
    }
}

/// Feeds `body` to a `FormStream` in `chunks` and checks it against `parse`.
fn agrees(boundary: &str, body: &[u8], how: &Chunking) -> Result<(), TestCaseError> {
    let expected = multipart::parse(boundary, body);
    let mut stream = match FormStream::new(boundary) {
        Ok(s) => s,
        Err(e) => {
            prop_assert_eq!(expected.map_err(|e| e.code), Err(e.code));
            return Ok(());
        }
    };
    // The model announced first, and the chunk it was announced after (start, end).
    let mut known: Option<(Option<String>, usize, usize)> = None;
    let mut failed = None;
    let mut consumed = 0;
    for chunk in chunks(body, how) {
        match stream.push(chunk) {
            Ok(progress) => {
                let start = consumed;
                consumed += chunk.len();
                prop_assert_eq!(stream.consumed(), consumed);
                match (&known, progress) {
                    (None, Progress::NeedMore) => prop_assert_eq!(stream.model_span(), None),
                    (None, Progress::ModelKnown(model)) => {
                        let span = stream.model_span();
                        prop_assert_eq!(model.is_some(), span.is_some());
                        if let (Some(model), Some(span)) = (&model, span) {
                            prop_assert!(span.end <= consumed);
                            prop_assert_eq!(body.get(span), Some(model.as_bytes()));
                        }
                        known = Some((model, start, consumed));
                    }
                    (Some((first, _, _)), Progress::ModelKnown(model)) => {
                        prop_assert_eq!(first, &model, "the announced model changed");
                    }
                    (Some(_), Progress::NeedMore) => {
                        prop_assert!(false, "the model was known, then not");
                    }
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let got = stream.finish();
    if let Some(e) = failed {
        prop_assert_eq!(&got, &Err(e), "an error is final");
    }
    prop_assert_eq!(stream.finish(), got.clone(), "finish answers again");
    match (&expected, &got) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(a), Err(b)) => prop_assert_eq!(a.code, b.code, "{} / {}", a, b),
        (a, b) => prop_assert!(false, "parse: {:?}, stream: {:?}", a, b),
    }
    let Ok(form) = got else {
        return Ok(());
    };
    // An accepted form settled its model, with the value the form has, and as soon as
    // the body passed the end of the model part (or its closing delimiter).
    let Some((model, start, end)) = known else {
        prop_assert!(false, "an accepted form never settled its model");
        return Ok(());
    };
    prop_assert_eq!(&model, &form.model);
    let settled = match &form.model_span {
        Some(span) => span.end + boundary.len() + 4,
        None => body.len() - if body.ends_with(b"\r\n") { 2 } else { 0 },
    };
    prop_assert!(
        start < settled && settled <= end,
        "settled at {} in {}..{}",
        settled,
        start,
        end
    );
    // Routing rewrites the field inside the prefix held until then.
    match stream.with_model(&body[..end], "rtd") {
        Some(routed) => {
            let whole = [&routed[..], &body[end..]].concat();
            let again = multipart::parse(boundary, &whole);
            prop_assert_eq!(again.as_ref().map(|f| f.model.as_deref()), Ok(Some("rtd")));
            prop_assert_eq!(again.map(|f| f.parts), Ok(form.parts));
        }
        None => prop_assert_eq!(form.model, None),
    }
    Ok(())
}

fn with_boundary(body: &[u8], boundary: &str) -> Vec<u8> {
    if boundary == BOUNDARY {
        return body.to_vec();
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(BOUNDARY.as_bytes()) {
            out.extend_from_slice(boundary.as_bytes());
            rest = after;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_stream_reaches_the_verdict_of_parse(
        body in body(),
        boundary in boundary(),
        how in chunking(),
    ) {
        agrees(boundary, &with_boundary(&body, boundary), &how)?;
    }

    #[test]
    fn every_chunking_of_a_form_reaches_the_same_verdict(
        body in prop_oneof![generated_form(), rich_form()],
        how in prop::collection::vec(chunking(), 4),
    ) {
        for how in how.iter().chain([&Chunking::Bytes, &Chunking::Whole]) {
            agrees(BOUNDARY, &body, how)?;
        }
    }

    #[test]
    fn any_boundary_is_refused_or_read_as_parse_reads_it(
        boundary in "[ -~]{0,72}",
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        agrees(&boundary, &body, &Chunking::Bytes)?;
    }
}

#[test]
fn two_cuts_anywhere_reach_the_verdict_of_parse() {
    // Every pair of cuts in bodies at the edge of the framing rules.
    let bodies: Vec<Vec<u8>> = vec![
        b"--BoUnDaRy\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--BoUnDaRy--\r\n".to_vec(),
        b"--BoUnDaRy\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n--BoUnDaRy\r\n--BoUnDaRy--".to_vec(),
        b"--BoUnDaRy\r\n\r\n--BoUnDaRy\r\nContent-Disposition: form-data; name=model\r\n\r\n\r\n--BoUnDaRy--\r\n\r\n".to_vec(),
    ];
    for body in &bodies {
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let mut s = FormStream::new(BOUNDARY).unwrap();
                let got = s
                    .push(&body[..i])
                    .and_then(|_| s.push(&body[i..j]))
                    .and_then(|_| s.push(&body[j..]))
                    .and_then(|_| s.finish());
                let expected = multipart::parse(BOUNDARY, body);
                assert_eq!(
                    got.map_err(|e| e.code),
                    expected.map_err(|e| e.code),
                    "{i} {j}"
                );
            }
        }
    }
}
