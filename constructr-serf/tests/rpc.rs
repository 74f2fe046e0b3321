//! The RPC client against real Serf agents: every command, auth, and reconnection.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use constructr_serf::{
    DriverError, MemberEventKind, MemberFilter, MemberStatus, QueryParams, QueryRecord, SerfClient,
    SerfConfig, SerfError, StreamEvent,
};
use support::{Agent, AgentOptions, eventually};

fn client(agent: &Agent) -> SerfClient {
    SerfClient::new(SerfConfig::new(agent.rpc.to_string())).unwrap()
}

async fn next_event(stream: &mut constructr_serf::EventStream) -> StreamEvent {
    tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("no stream event within 15 s")
        .expect("stream ended")
        .expect("stream error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_real_agent() {
    let Some(bin) = support::serf_bin() else {
        return;
    };
    let a = Agent::start(&bin, "rpc-a", AgentOptions::default().tag("dc", "dc1"));
    let mut b = Agent::start(&bin, "rpc-b", AgentOptions::default());
    let ca = client(&a);
    let cb = client(&b);

    // handshake happens on connect; stats names the agent.
    ca.check().await.unwrap();
    assert_eq!(ca.agent_name().await.unwrap(), "rpc-a");

    // members (no body sent), one member before joining.
    let members = ca.members().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, "rpc-a");
    assert_eq!(members[0].addr.to_string(), "127.0.0.1");
    assert_eq!(members[0].port, a.bind.port());
    assert_eq!(members[0].status, MemberStatus::Alive);
    assert_eq!(members[0].tags.get("dc").map(String::as_str), Some("dc1"));

    // stream member events on a, then join b to a.
    let mut stream = ca.stream("member-join,member-update,user").await.unwrap();
    let joined = cb.join(&[a.bind.to_string()], false).await.unwrap();
    assert_eq!(joined, 1);
    let ev = loop {
        if let StreamEvent::Member {
            kind: MemberEventKind::Join,
            members,
        } = next_event(&mut stream).await
            && members.iter().any(|m| m.name == "rpc-b")
        {
            break members;
        }
    };
    assert!(ev.iter().any(|m| m.name == "rpc-b" && m.tags.is_empty()));

    // a failed join is an agent error (with a body, which the reader must consume).
    let bad = cb
        .join(&["127.0.0.1:1".to_string()], false)
        .await
        .unwrap_err();
    assert!(matches!(bad, SerfError::Agent { .. }), "{bad:?}");
    // ... and the connection is still in step.
    assert_eq!(cb.members().await.unwrap().len(), 2);

    // tags: set and delete in one update; the change reaches a as member-update.
    let set = BTreeMap::from([("role".to_string(), "web, frontend".to_string())]);
    cb.tags(&set, &[]).await.unwrap();
    let updated = loop {
        if let StreamEvent::Member {
            kind: MemberEventKind::Update,
            members,
        } = next_event(&mut stream).await
        {
            break members;
        }
    };
    assert_eq!(updated[0].name, "rpc-b");
    assert_eq!(updated[0].tags["role"], "web, frontend");

    // members-filtered by tag and status (Serf anchors the expressions).
    let filter = MemberFilter {
        tags: BTreeMap::from([("role".to_string(), "web.*".to_string())]),
        status: "alive".into(),
        ..Default::default()
    };
    let web = ca.members_filtered(&filter).await.unwrap();
    assert_eq!(
        web.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["rpc-b"]
    );
    let by_name = MemberFilter {
        name: "rpc-.".into(),
        ..Default::default()
    };
    assert_eq!(ca.members_filtered(&by_name).await.unwrap().len(), 2);
    cb.tags(&BTreeMap::new(), &["role".to_string()])
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "role tag deleted", || async {
        let m = ca.members_filtered(&filter).await.unwrap();
        m.is_empty().then_some(())
    })
    .await;

    // event with a binary payload, seen on a's stream.
    cb.event("deploy", b"v1\0\xff", false).await.unwrap();
    let (name, payload) = loop {
        if let StreamEvent::User { name, payload, .. } = next_event(&mut stream).await {
            break (name, payload);
        }
    };
    assert_eq!(name, "deploy");
    assert_eq!(payload, b"v1\0\xff");

    // query with acks; b answers through its own stream + respond.
    let mut queries = cb.stream("query").await.unwrap();
    let responder = {
        let cb = cb.clone();
        tokio::spawn(async move {
            loop {
                if let StreamEvent::Query {
                    id, name, payload, ..
                } = next_event(&mut queries).await
                {
                    assert_eq!(name, "ping");
                    let mut answer = b"pong:".to_vec();
                    answer.extend_from_slice(&payload);
                    cb.respond(id, &answer).await.unwrap();
                    // An id that is not pending is refused.
                    let err = cb.respond(id + 1000, b"x").await.unwrap_err();
                    assert!(err.to_string().contains("No pending queries"), "{err}");
                    return;
                }
            }
        })
    };
    let records = ca
        .query(&QueryParams {
            name: "ping".into(),
            payload: b"42".to_vec(),
            request_ack: true,
            filter_nodes: vec!["rpc-b".into()],
            timeout: Some(Duration::from_secs(3)),
            ..Default::default()
        })
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    responder.await.unwrap();
    assert!(
        records.contains(&QueryRecord::Ack {
            from: "rpc-b".into()
        }),
        "{records:?}"
    );
    assert!(
        records.contains(&QueryRecord::Response {
            from: "rpc-b".into(),
            payload: b"pong:42".to_vec()
        }),
        "{records:?}"
    );

    // An unknown command: answered with an error, then the agent closes the connection;
    // the next command reconnects.
    let err = ca
        .command_without_body("no-such-command")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SerfError::Agent { message, .. } if message == "Unsupported command"),
        "{err:?}"
    );
    assert_eq!(ca.members().await.unwrap().len(), 2);

    // An invalid regular expression: the agent closes the connection without an answer.
    let bad_re = MemberFilter {
        name: "(".into(),
        ..Default::default()
    };
    let err = ca.members_filtered(&bad_re).await.unwrap_err();
    assert!(matches!(err, SerfError::ConnectionClosed { .. }), "{err:?}");
    assert_eq!(ca.members().await.unwrap().len(), 2);

    // force-leave of an alive member is accepted (no-op), body consumed.
    ca.force_leave("nobody").await.unwrap();

    // leave: b leaves gracefully and shuts down; a sees it left.
    cb.leave().await.unwrap();
    assert!(b.wait_exit(Duration::from_secs(15)), "agent b did not exit");
    eventually(Duration::from_secs(10), "b left", || async {
        let m = ca.members().await.unwrap();
        m.iter()
            .any(|m| m.name == "rpc-b" && m.status == MemberStatus::Left)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_key_is_required_and_checked() {
    let Some(bin) = support::serf_bin() else {
        return;
    };
    let options = AgentOptions::default().with_rpc_auth("s3cret");
    let a = Agent::start(&bin, "rpc-auth", options);
    let good = SerfClient::new(SerfConfig::new(a.rpc.to_string()).with_auth_key("s3cret")).unwrap();
    assert_eq!(good.members().await.unwrap().len(), 1);
    let mut s = good.stream("user").await.unwrap();
    good.event("e", b"", true).await.unwrap();
    assert!(matches!(next_event(&mut s).await, StreamEvent::User { .. }));

    let wrong = SerfClient::new(SerfConfig::new(a.rpc.to_string()).with_auth_key("wrong")).unwrap();
    let err = wrong.members().await.unwrap_err();
    assert!(matches!(err, SerfError::Unauthorized { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains("wrong"), "{err}");

    let none = SerfClient::new(SerfConfig::new(a.rpc.to_string())).unwrap();
    let err = none.members().await.unwrap_err();
    assert!(
        matches!(&err, SerfError::Unauthorized { message } if message == "Authentication required"),
        "{err:?}"
    );
    // A command with a body that Serf did not read must not desynchronise later commands.
    let err = none
        .tags(&BTreeMap::from([("x".into(), "y".into())]), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, SerfError::Unauthorized { .. }), "{err:?}");
    assert!(matches!(
        none.members().await.unwrap_err(),
        SerfError::Unauthorized { .. }
    ));
    // The good client is unaffected.
    assert_eq!(good.members().await.unwrap()[0].tags.get("x"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_stream_reconnect_after_agent_restart() {
    let Some(bin) = support::serf_bin() else {
        return;
    };
    let options = AgentOptions::default().with_rpc_auth("k");
    let mut a = Agent::start(&bin, "rpc-restart", options);
    let c = SerfClient::new(
        SerfConfig::new(a.rpc.to_string())
            .with_auth_key("k")
            .with_request_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    let mut stream = c.stream("user").await.unwrap();
    c.event("before", b"", false).await.unwrap();
    assert!(
        matches!(next_event(&mut stream).await, StreamEvent::User { name, .. } if name == "before")
    );

    a.restart();
    // The next command reconnects (handshake + auth again).
    assert_eq!(c.members().await.unwrap().len(), 1);
    // The stream re-subscribes and reconciles with a full members read.
    match next_event(&mut stream).await {
        StreamEvent::Resynced { members } => assert_eq!(members[0].name, "rpc-restart"),
        other => panic!("expected Resynced, got {other:?}"),
    }
    c.event("after", b"p", false).await.unwrap();
    assert!(
        matches!(next_event(&mut stream).await, StreamEvent::User { name, .. } if name == "after")
    );

    // While the agent is down, commands fail with a retryable error after the timeout.
    a.kill();
    let short = SerfClient::new(
        SerfConfig::new(a.rpc.to_string())
            .with_auth_key("k")
            .with_request_timeout(Duration::from_millis(500)),
    )
    .unwrap();
    let err = short.members().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}
