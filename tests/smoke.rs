mod support;
use support::*;

#[test]
fn support_compiles_and_a_tiny_lottery_runs() {
    let dir = TempDir::new("smoke");
    let server = TestServer::start(server_config(dir.path(), 1));
    let mut peer = Peer::hello(server.addr, 1);
    peer.store(1, vec![bet("Ana", "1", 7574), bet("Luis", "2", 1)]);
    assert_eq!(peer.fin(), (1, 1));
    assert_eq!(peer.winners(), vec!["1".to_string()]);
    drop(peer);
    assert_eq!(server.stored().len(), 2);
    server.stop().expect("clean stop");
}
