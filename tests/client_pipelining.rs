//! A pipelining client (batch.window > 1) against a server that
//! answers its batches out of order, twice, or with the wrong count never completes.
mod support;

use std::net::{SocketAddr, TcpListener};

use loteria::client::{self, ClientError};
use loteria::connection::Connection;
use loteria::protocol::Message;
use loteria::shutdown::Shutdown;
use support::{TempDir, bet, client_config, fresh_welcome, write_agency_file};

/// A fake server that reads the HELLO and `batches` BETS, then answers them with
/// `answer(seqs_and_counts)`; it then answers anything else honestly.
fn lying_server(batches: usize, answer: fn(&[(u64, u16)]) -> Vec<Message>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let Ok(mut conn) = Connection::new(stream) else {
                    return;
                };
                let mut got = Vec::new();
                while let Ok(Some(message)) = conn.read_message() {
                    match message {
                        Message::Hello { agency, upload } => {
                            let _ = conn.write_message(&fresh_welcome(agency, upload));
                        }
                        Message::Bets { seq, bets, .. } => {
                            got.push((seq, bets.len() as u16));
                            if got.len() == batches {
                                let _ = conn.write_messages(&answer(&got));
                            }
                        }
                        Message::Fin => {
                            let _ = conn.write_message(&Message::FinAck {
                                finished: 1,
                                agencies: 1,
                            });
                        }
                        Message::WinnersQuery => {
                            let _ = conn.write_message(&Message::Winners {
                                last: true,
                                documents: Vec::new(),
                            });
                        }
                        _ => return,
                    }
                }
            });
        }
    });
    addr
}

fn run_against(addr: SocketAddr, name: &str) -> Result<client::Outcome, ClientError> {
    let dir = TempDir::new(name);
    let data = dir.join("agency-1.csv");
    let bets: Vec<_> = (1..=8)
        .map(|d| bet("Ana", &d.to_string(), d as u16))
        .collect();
    write_agency_file(&data, &bets);
    let mut config = client_config(addr, 1, &data);
    config.batch_max_amount = 2; // 4 batches.
    config.batch_window = 8;
    config.retry_deadline = std::time::Duration::from_secs(2);
    client::run(&config, &Shutdown::new())
}

#[test]
fn acks_out_of_order_fail_the_upload() {
    let addr = lying_server(4, |got| {
        let mut acks: Vec<Message> = got
            .iter()
            .map(|&(seq, count)| Message::BetsAck { seq, count })
            .collect();
        acks.swap(0, 1);
        acks
    });
    let result = run_against(addr, "rv-client-swap");
    println!("{result:?}");
    assert!(
        matches!(result, Err(ClientError::Unexpected { .. })),
        "completed against swapped ACKs: {result:?}"
    );
}

#[test]
fn a_doubled_ack_fails_the_upload() {
    let addr = lying_server(4, |got| {
        let mut acks = vec![Message::BetsAck {
            seq: got[0].0,
            count: got[0].1,
        }];
        acks.extend(
            got.iter()
                .map(|&(seq, count)| Message::BetsAck { seq, count }),
        );
        acks
    });
    let result = run_against(addr, "rv-client-double");
    println!("{result:?}");
    assert!(
        matches!(result, Err(ClientError::Unexpected { .. })),
        "completed against a doubled ACK: {result:?}"
    );
}

#[test]
fn an_ack_with_the_wrong_count_fails_the_upload() {
    let addr = lying_server(4, |got| {
        got.iter()
            .map(|&(seq, count)| Message::BetsAck {
                seq,
                count: count - 1,
            })
            .collect()
    });
    let result = run_against(addr, "rv-client-count");
    println!("{result:?}");
    assert!(
        matches!(result, Err(ClientError::Unexpected { .. })),
        "completed against short ACKs: {result:?}"
    );
}
