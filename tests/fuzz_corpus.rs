//! The fuzz corpus, replayed with stable Rust: every input of `fuzz/corpus/<target>/`
//! and every crash kept in `fuzz/artifacts/<target>/` goes through the same harness
//! the fuzzer runs (`tests/support/fuzzing.rs`), and so do the generated seeds below
//! (the worked examples of `docs/PROTOCOL.md` among them, whether or not minimising
//! the corpus kept them). A missing or empty corpus directory fails the test.
//!
//! The seed corpus is made by this file, not by hand:
//! `LOTERIA_WRITE_SEEDS=1 cargo test --test fuzz_corpus every_target_has_named_seeds`
//! writes the seeds into `fuzz/corpus/<target>/seed-*` (see README.md, "Fuzzing").

#[path = "support/fuzzing.rs"]
mod fuzzing;

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use chrono::NaiveDate;
use loteria::bet::Bet;
use loteria::protocol::{
    AgencyStatus, ErrorCode, HEADER_LEN, MAX_PAYLOAD_LEN, Message, StatusSnapshot, VERSION, kind,
};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir`, sorted (dot files, such as a `.gitkeep`, left out).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("read a corpus directory entry").path())
            .filter(|p| p.is_file())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

fn harness(target: &str) -> fuzzing::Harness {
    fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, harness)| *harness)
        .unwrap_or_else(|| panic!("no harness named {target}"))
}

/// Runs `harness` on `input`, naming the input if it fails.
fn run(target: &str, what: &str, input: &[u8]) {
    let harness = harness(target);
    if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| harness(input))) {
        eprintln!("{target}: {what} fails ({} bytes)", input.len());
        panic::resume_unwind(panic);
    }
}

/// One replay at a time: `server_session` counts the panics of every thread of the
/// process (a server thread's panic is only logged by the server), so no other harness
/// may panic meanwhile.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn replay(target: &str) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let corpus_dir = root().join("fuzz/corpus").join(target);
    let corpus = files(&corpus_dir);
    assert!(
        !corpus.is_empty(),
        "{} is missing or empty: the replay would pass without replaying anything",
        corpus_dir.display()
    );
    let crashes = files(&root().join("fuzz/artifacts").join(target));
    for path in corpus.iter().chain(&crashes) {
        let input = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        run(target, &path.display().to_string(), &input);
    }
    let seeds = seeds(target);
    for (name, input) in &seeds {
        run(target, &format!("generated seed {name}"), input);
    }
    println!(
        "{target}: replayed {} inputs: {} of fuzz/corpus, {} of fuzz/artifacts, {} generated seeds",
        corpus.len() + crashes.len() + seeds.len(),
        corpus.len(),
        crashes.len(),
        seeds.len()
    );
}

#[test]
fn frame_decoder_corpus() {
    replay("frame_decoder");
}

#[test]
fn server_session_corpus() {
    replay("server_session");
}

#[test]
fn agency_file_corpus() {
    replay("agency_file");
}

#[test]
fn config_corpus() {
    replay("config");
}

#[test]
fn log_text_corpus() {
    replay("log_text");
}

/// Every harness has its fuzz target and a replay test above: none is fuzzed without
/// being replayed, or replayed without being fuzzable.
#[test]
fn every_harness_is_a_fuzz_target_with_a_replay_test() {
    let source = include_str!("fuzz_corpus.rs");
    for (name, _) in fuzzing::TARGETS {
        let target = root().join("fuzz/fuzz_targets").join(format!("{name}.rs"));
        let text =
            fs::read_to_string(&target).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        assert!(
            text.contains(&format!("fuzzing::{name}(")),
            "{} does not run the {name} harness",
            target.display()
        );
        let manifest = fs::read_to_string(root().join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} is not a [[bin]]"
        );
        assert!(
            source.contains(&format!("replay(\"{name}\")")),
            "{name} is not replayed"
        );
    }
}

/// Every target has seeds, each under its own name (a file name). With
/// `LOTERIA_WRITE_SEEDS=1` it also writes them into `fuzz/corpus/<target>/seed-<name>`
/// (by hand, before fuzzing from scratch; `cargo fuzz cmin` may drop some later, the
/// replay above runs all of them anyway).
#[test]
fn every_target_has_named_seeds_which_can_be_written_out() {
    let write = std::env::var_os("LOTERIA_WRITE_SEEDS").is_some_and(|v| v == "1");
    for (target, _) in fuzzing::TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        let names: std::collections::HashSet<&String> = seeds.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), seeds.len(), "{target}: two seeds share a name");
        if !write {
            continue;
        }
        let dir = root().join("fuzz/corpus").join(target);
        fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in &seeds {
            fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
        }
        println!(
            "{target}: {} seeds written to {}",
            seeds.len(),
            dir.display()
        );
    }
}

// ---------------------------------------------------------------------------------
// The seeds

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "frame_decoder" => frame_seeds(),
        "server_session" => session_seeds(),
        "agency_file" => agency_file_seeds(),
        "config" => config_seeds(),
        "log_text" => log_text_seeds(),
        other => panic!("no seeds for {other}"),
    }
}

/// The worked examples of `docs/PROTOCOL.md`: the hex of each code block under
/// "## Worked examples", named after the bold title above it.
fn doc_examples() -> Vec<(String, Vec<u8>)> {
    let text = fs::read_to_string(root().join("docs/PROTOCOL.md")).expect("docs/PROTOCOL.md");
    let start = text
        .find("## Worked examples")
        .expect("a Worked examples section");
    let section = &text[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut examples: Vec<(String, Vec<u8>)> = Vec::new();
    let mut title = String::new();
    let mut block: Option<Vec<u8>> = None;
    for line in section.lines() {
        if line.starts_with("```") {
            match block.take() {
                Some(bytes) => {
                    let mut name = title.clone();
                    let mut n = 2;
                    while examples.iter().any(|(other, _)| *other == name) {
                        name = format!("{title}-{n}");
                        n += 1;
                    }
                    examples.push((name, bytes));
                }
                None => block = Some(Vec::new()),
            }
            continue;
        }
        match &mut block {
            // Hex bytes up to the first word that is not one (a comment).
            Some(bytes) => bytes.extend(
                line.split_whitespace()
                    .map_while(|w| (w.len() == 2).then(|| u8::from_str_radix(w, 16).ok())?),
            ),
            None => {
                if let Some(rest) = line.strip_prefix("**") {
                    let name = rest.split("**").next().unwrap_or_default();
                    title = name.to_ascii_lowercase().replace(['_', ' '], "-");
                }
            }
        }
    }
    assert!(
        examples.len() >= 13,
        "found only {} examples",
        examples.len()
    );
    for (name, bytes) in &examples {
        assert_eq!(bytes.first(), Some(&VERSION), "example {name}");
        let frame = loteria::protocol::read_frame(&mut &bytes[..])
            .unwrap_or_else(|e| panic!("example {name}: {e}"))
            .expect("a frame");
        assert_eq!(
            frame.to_bytes(),
            *bytes,
            "example {name} is one whole frame"
        );
        frame
            .decode()
            .unwrap_or_else(|e| panic!("example {name} does not decode: {e}"));
    }
    examples
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
}

fn bet(first: &str, document: &str, number: u16) -> Bet {
    Bet {
        first_name: first.into(),
        last_name: "Núñez".into(),
        document: document.into(),
        birthdate: date(1999, 3, 17),
        number,
    }
}

fn encode(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        m.encode_into(&mut out).expect("a seed message encodes");
    }
    out
}

fn raw(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![VERSION, kind];
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn snapshot(agencies: u32, drawn: bool) -> StatusSnapshot {
    StatusSnapshot {
        agencies,
        finished: agencies / 2,
        drawn,
        entries: (1..=agencies)
            .map(|agency| AgencyStatus {
                agency,
                connected: agency % 3 == 0,
                finished: agency <= agencies / 2,
                bets: u64::from(agency) * 7,
                winners: drawn.then_some(agency % 2),
            })
            .collect(),
    }
}

fn every_message() -> Vec<(&'static str, Message)> {
    vec![
        (
            "hello",
            Message::Hello {
                agency: 1,
                upload: 0x1122_3344_5566_7788,
            },
        ),
        (
            "bets",
            Message::Bets {
                seq: 1,
                line: 2,
                bets: vec![
                    bet("Ana", "30904465", 7574),
                    bet("José María", "00000000", 0),
                ],
            },
        ),
        ("fin", Message::Fin),
        ("winners-query", Message::WinnersQuery),
        ("echo", Message::Echo(b"hola".to_vec())),
        ("status-query", Message::StatusQuery),
        (
            "welcome",
            Message::Welcome {
                agency: 2,
                upload: 9,
                stored_seq: 3,
                stored_bets: 250,
                stored_line: 251,
                finished: true,
                drawn: false,
            },
        ),
        ("bets-ack", Message::BetsAck { seq: 3, count: 100 }),
        (
            "fin-ack",
            Message::FinAck {
                finished: 1,
                agencies: 2,
            },
        ),
        (
            "winners",
            Message::Winners {
                last: false,
                documents: vec!["1".into(), "99999999".into()],
            },
        ),
        (
            "draw-pending",
            Message::DrawPending {
                finished: 1,
                agencies: 3,
            },
        ),
        (
            "status",
            Message::Status(snapshot(3, true).chunks()[0].clone()),
        ),
        (
            "error",
            Message::Error {
                code: ErrorCode::BadSeq,
                reason: "batch 5 is neither the next batch (2) nor a replay".into(),
            },
        ),
        (
            "error-unknown-code",
            Message::Error {
                code: ErrorCode::Other(999),
                reason: String::new(),
            },
        ),
    ]
}

fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, bytes) in doc_examples() {
        // Cut in the header and in the payload: truncated frames.
        seeds.push((format!("doc-{name}-cut-header"), bytes[..2].to_vec()));
        if bytes.len() > HEADER_LEN + 1 {
            let cut = HEADER_LEN + (bytes.len() - HEADER_LEN) / 2;
            seeds.push((format!("doc-{name}-cut-payload"), bytes[..cut].to_vec()));
        }
        seeds.push((format!("doc-{name}"), bytes));
    }
    for (name, message) in every_message() {
        seeds.push((format!("message-{name}"), encode(&[message])));
    }
    seeds.push((
        "conversation".into(),
        encode(&[
            Message::Hello {
                agency: 1,
                upload: 7,
            },
            Message::Bets {
                seq: 1,
                line: 1,
                bets: vec![bet("Ana", "30904465", 7574)],
            },
            Message::Fin,
            Message::WinnersQuery,
        ]),
    ));
    seeds.push((
        "conversation-replies".into(),
        encode(&[
            Message::Welcome {
                agency: 1,
                upload: 7,
                stored_seq: 0,
                stored_bets: 0,
                stored_line: 0,
                finished: false,
                drawn: false,
            },
            Message::BetsAck { seq: 1, count: 1 },
            Message::FinAck {
                finished: 1,
                agencies: 2,
            },
            Message::DrawPending {
                finished: 1,
                agencies: 2,
            },
            Message::Winners {
                last: false,
                documents: vec!["30904465".into()],
            },
            Message::Winners {
                last: true,
                documents: vec![],
            },
        ]),
    ));
    // Whole STATUS answers of one, two (a full chunk of 480 entries first) and zero
    // agencies; then one whose second chunk disagrees with the first.
    for (name, agencies) in [("status-answer-2", 2), ("status-answer-481", 481)] {
        let chunks = snapshot(agencies, agencies == 2).chunks();
        seeds.push((
            name.into(),
            encode(&chunks.into_iter().map(Message::Status).collect::<Vec<_>>()),
        ));
    }
    seeds.push((
        "status-answer-0".into(),
        encode(&[Message::Status(snapshot(0, false).chunks()[0].clone())]),
    ));
    let mut mixed = snapshot(481, false).chunks();
    mixed[1].finished += 1;
    seeds.push((
        "status-answer-mixed".into(),
        encode(&mixed.into_iter().map(Message::Status).collect::<Vec<_>>()),
    ));
    seeds.push((
        "echo-largest".into(),
        encode(&[Message::Echo(vec![b'x'; MAX_PAYLOAD_LEN])]),
    ));
    seeds.push((
        "oversized-65535".into(),
        vec![VERSION, kind::BETS, 0xff, 0xff],
    ));
    seeds.push((
        "oversized-8189".into(),
        vec![VERSION, kind::ECHO, 0x1f, 0xfd, 0, 0, 0],
    ));
    seeds.push((
        "version-2".into(),
        raw(kind::HELLO, &[0; 12])
            .iter()
            .enumerate()
            .map(|(i, &b)| if i == 0 { 2 } else { b })
            .collect(),
    ));
    seeds.push(("plain-text".into(), b"hola\n".to_vec()));
    seeds.push((
        "tls-client-hello".into(),
        vec![0x16, 0x03, 0x01, 0x00, 0x2f, 0x01],
    ));
    seeds.push(("unknown-kind".into(), raw(0x42, b"??")));
    seeds.push(("hello-trailing-byte".into(), raw(kind::HELLO, &[0; 13])));
    seeds.push(("bets-count-65535".into(), {
        let mut payload = 1u64.to_be_bytes().to_vec();
        payload.extend_from_slice(&0u64.to_be_bytes());
        payload.extend_from_slice(&u16::MAX.to_be_bytes());
        raw(kind::BETS, &payload)
    }));
    seeds.push(("bets-february-30".into(), {
        let mut bytes = encode(&[Message::Bets {
            seq: 1,
            line: 0,
            bets: vec![bet("Ana", "1", 1)],
        }]);
        let day = bytes.len() - 3;
        bytes[day - 1] = 2;
        bytes[day] = 30;
        bytes
    }));
    seeds.push(("empty".into(), Vec::new()));
    seeds
}

/// `BETS` of one bet of agency `agency` (document `<agency><seq>`), from file line `seq`.
fn one_bet(agency: u32, seq: u64, number: u16) -> Message {
    Message::Bets {
        seq,
        line: seq,
        bets: vec![bet("Ana", &format!("{agency}{seq:03}"), number)],
    }
}

fn hello(agency: u32) -> Message {
    Message::Hello {
        agency,
        upload: 0x0102_0304_0506_0708 + u64::from(agency),
    }
}

/// One agency's whole upload: HELLO, `batches` batches (the first plays the winning
/// number), FIN, WINNERS_QUERY.
fn upload(agency: u32, batches: u64) -> Vec<u8> {
    let mut messages = vec![hello(agency)];
    messages
        .extend((1..=batches).map(|seq| one_bet(agency, seq, if seq == 1 { 7574 } else { 12 })));
    messages.extend([Message::Fin, Message::WinnersQuery]);
    encode(&messages)
}

fn session_seeds() -> Vec<(String, Vec<u8>)> {
    use fuzzing::{MODE_CONCURRENT as CONCURRENT, MODE_THREE_AGENCIES as THREE, session_input};
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, mode: u8, connections: &[&[u8]]| {
        seeds.push((name.to_string(), session_input(mode, connections)));
    };
    add("conversation", 0, &[&upload(1, 1)]);
    let after_draw = encode(&[hello(1), Message::WinnersQuery, Message::StatusQuery]);
    let second = {
        let mut bytes = upload(2, 2);
        bytes.extend(encode(&[Message::StatusQuery]));
        bytes
    };
    let lottery: [&[u8]; 3] = [&upload(1, 3), &second, &after_draw];
    add("lottery", 0, &lottery);
    add("lottery-concurrent", CONCURRENT, &lottery);
    add(
        "lottery-three-agencies",
        THREE,
        &[&upload(1, 1), &upload(2, 1), &upload(3, 2), &after_draw],
    );
    // The worked examples of docs/PROTOCOL.md as one agency's conversation (agency 3).
    let examples = doc_examples();
    let example = |name: &str| -> Vec<u8> {
        examples
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no example {name}"))
            .1
            .clone()
    };
    let doc: Vec<u8> = ["hello", "bets", "fin", "status-query", "winners-query"]
        .iter()
        .flat_map(|name| example(name))
        .collect();
    add("doc-conversation", THREE, &[&doc]);
    add("doc-echo", 0, &[&example("echo")]);
    add(
        "replay-and-bad-seq",
        0,
        &[&encode(&[
            hello(1),
            one_bet(1, 1, 5),
            one_bet(1, 1, 5),
            one_bet(1, 1, 6),
            one_bet(1, 3, 5),
            one_bet(1, u64::MAX, 5),
            one_bet(1, 2, 5),
        ])],
    );
    add(
        "upload-conflict",
        0,
        &[
            &encode(&[hello(1), one_bet(1, 1, 5)]),
            &encode(&[
                Message::Hello {
                    agency: 1,
                    upload: 99,
                },
                one_bet(1, 2, 5),
                Message::Fin,
                Message::WinnersQuery,
            ]),
        ],
    );
    add(
        "supersede",
        CONCURRENT,
        &[
            &encode(&[hello(1), Message::Fin, Message::WinnersQuery]),
            &encode(&[hello(1), one_bet(1, 1, 5)]),
        ],
    );
    add(
        "rules",
        0,
        &[&encode(&[
            one_bet(1, 1, 5),
            Message::Fin,
            Message::WinnersQuery,
            hello(0),
            hello(3),
            hello(1),
            hello(2),
            Message::WinnersQuery,
            Message::Fin,
            one_bet(1, 1, 5),
            Message::StatusQuery,
        ])],
    );
    let replies: Vec<u8> = every_message()
        .into_iter()
        .filter(|(_, m)| m.kind() & 0x80 != 0)
        .flat_map(|(_, m)| encode(&[m]))
        .collect();
    add("reply-kinds-as-requests", 0, &[&replies]);
    let invalid_bets = {
        let mut messages = vec![hello(2)];
        let mut bad = |edit: &dyn Fn(&mut Bet)| {
            let mut b = bet("Ana", "1", 1);
            edit(&mut b);
            messages.push(Message::Bets {
                seq: 1,
                line: 0,
                bets: vec![bet("Ana", "2", 2), b],
            });
        };
        bad(&|b| b.number = 10_000);
        bad(&|b| b.document = "123456789".into());
        bad(&|b| b.document = "12a".into());
        bad(&|b| b.first_name = " ".into());
        bad(&|b| b.last_name = "Paz\nRoca".into());
        bad(&|b| b.birthdate = date(1899, 12, 31));
        bad(&|b| b.birthdate = date(2999, 1, 1));
        let mut bytes = encode(&messages);
        bytes.extend(raw(kind::BETS, &[0; 18]));
        bytes.extend(raw(kind::HELLO, &[0, 0, 0, 2]));
        bytes.extend(raw(0x42, b""));
        bytes.extend(raw(kind::STATUS_QUERY, b"x"));
        bytes
    };
    add("invalid-requests", 0, &[&invalid_bets]);
    add(
        "echo",
        0,
        &[&encode(&[
            Message::Echo(Vec::new()),
            Message::Echo(b"hola".to_vec()),
            Message::Echo(vec![0xa5; MAX_PAYLOAD_LEN]),
        ])],
    );
    add(
        "plain-text",
        0,
        &[b"hola\nchau", "ñandú\r\n¡hola!\n".as_bytes(), b"\tx|y\n\n"],
    );
    let long_line = {
        let mut text = vec![b'a'; 1100];
        text.extend_from_slice(b"\nnext\n");
        text
    };
    add("plain-text-long-line", 0, &[b"ok\n", &long_line]);
    add(
        "text-and-frames",
        CONCURRENT,
        &[b"hola\n", &encode(&[Message::StatusQuery]), b"chau"],
    );
    add(
        "broken-streams",
        0,
        &[
            &encode(&[hello(1)])[..7],
            &[VERSION, kind::BETS],
            &[VERSION, kind::ECHO, 0xff, 0xff, 1, 2, 3],
            &[2, kind::HELLO, 0, 0],
            &[0x16, 0x03, 0x01, 0x00, 0x2f],
            &[0x80, 0, 0, 0],
        ],
    );
    let status = encode(&[Message::StatusQuery]);
    add(
        "status-only",
        THREE | CONCURRENT,
        &[&status, &status, &status],
    );
    add(
        "bets-after-the-draw",
        0,
        &[
            &upload(1, 1),
            &upload(2, 1),
            &encode(&[hello(1), one_bet(1, 2, 5), Message::StatusQuery]),
        ],
    );
    add("empty-connections", 0, &[b"", b"", &encode(&[hello(1)])]);
    add("nothing", 0, &[]);
    seeds.push(("no-mode-byte".into(), Vec::new()));
    seeds
}

fn agency_file_seeds() -> Vec<(String, Vec<u8>)> {
    let dataset = fs::read(root().join("tests/data/tp0/agency-1.csv")).expect("the dataset");
    let first_lines = |bytes: &[u8], n: usize| -> Vec<u8> {
        let mut out = Vec::new();
        for line in bytes.split_inclusive(|&b| b == b'\n').take(n) {
            out.extend_from_slice(line);
        }
        out
    };
    let sample = fs::read(root().join("agencies/agency-1.csv")).expect("the sample data");
    let mut long_line = vec![b'x'; 64 * 1024 + 10];
    long_line.extend_from_slice(b"\nAna,Paz,1,1999-03-17,1\n");
    vec![
        ("dataset-crlf".into(), first_lines(&dataset, 12)),
        ("sample-lf".into(), first_lines(&sample, 12)),
        (
            "quoting".into(),
            "\u{feff}\"Paz, María\",\"O\"\"Neil\",  00000001 ,1999-3-7,0\n  \"Ana\" , Roca\t,2,1999-03-17, 9999 \r\n"
                .into(),
        ),
        (
            "invalid-lines".into(),
            concat!(
                "Ana,Paz,1,1999-03-17\n",
                "Ana,Paz,1,1999-02-30,1\n",
                "Ana,Paz,1,17/03/1999,1\n",
                "Ana,Paz,1,2999-03-17,1\n",
                "Ana,Paz,1,1899-03-17,1\n",
                "Ana,Paz,1,1999-03-17,10000\n",
                "Ana,Paz,1,1999-03-17,-1\n",
                "Ana,Paz,123456789,1999-03-17,1\n",
                "Ana,Paz,12a,1999-03-17,1\n",
                ",Paz,1,1999-03-17,1\n",
                "\"Ana,Paz,1,1999-03-17,1\n",
                "\"Ana\"x,Paz,1,1999-03-17,1\n",
                "Ana,Paz,1,1999-03-17,1,extra\n",
                "\n   \n\t\r\n",
                "Ana,Paz,1,1999-03-17,1"
            )
            .into(),
        ),
        ("invalid-utf8".into(), b"An\xffa,Paz,1,1999-03-17,1\n".to_vec()),
        ("line-over-64-kib".into(), long_line),
        ("empty".into(), Vec::new()),
    ]
}

fn config_seeds() -> Vec<(String, Vec<u8>)> {
    let server = fs::read(root().join("config/server.toml")).expect("config/server.toml");
    let client = fs::read(root().join("config/client.toml")).expect("config/client.toml");
    let with_env = |file: &[u8], env: &str| {
        let mut out = file.to_vec();
        out.push(0);
        out.extend_from_slice(env.as_bytes());
        out
    };
    vec![
        ("server".into(), server.clone()),
        ("client".into(), client.clone()),
        (
            "server-env".into(),
            with_env(&server, "SERVER_PORT= 0 \nSERVER_AGENCIES=1000000\nSERVER_IO_TIMEOUT=250ms\nSERVER_STORAGE=/tmp/x\ny.csv"),
        ),
        (
            "client-single-bet".into(),
            with_env(
                &client,
                "CLI_ID=3\nCLI_DATA=<id>/<id>.csv\nNOMBRE=Ana\nAPELLIDO=Paz\nDOCUMENTO=30904465\nNACIMIENTO=1999-03-17\nNUMERO=7574",
            ),
        ),
        (
            "client-status".into(),
            with_env(&client, "CLI_MODE=status\nNOMBRE=Ana\nCLI_LOOP_AMOUNT=18446744073709551615"),
        ),
        (
            "typos".into(),
            b"[sever]\nport = 1\n[server]\nprot = 2\nhost = { a = 1 }\n[lottery.agencies]\n".to_vec(),
        ),
        (
            "bad-values".into(),
            b"[server]\nport = 65536\nio_timeout = \"0s\"\nmax_connections = -1\n[lottery]\nagencies = 5\nwinning_number = 1e3\n".to_vec(),
        ),
        ("not-toml".into(), "[server\nport = \"ñ".as_bytes().to_vec()),
        ("empty".into(), Vec::new()),
    ]
}

fn log_text_seeds() -> Vec<(String, Vec<u8>)> {
    vec![
        ("plain".into(), b"hola".to_vec()),
        ("separators".into(), b"a | b\nc\r\n\\n \x1b[31m".to_vec()),
        (
            "unicode-controls".into(),
            "\u{2028}\u{2029}\u{202e}abc\u{2066}¦\u{85}".into(),
        ),
        ("invalid-utf8".into(), b"\xff\xfe ok \xc3".to_vec()),
        ("long".into(), "ñ".repeat(300).into_bytes()),
        ("empty".into(), Vec::new()),
    ]
}
