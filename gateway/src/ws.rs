//! `GET /ws`: one WebSocket session per client, speaking the protocol of
//! [`grokforge_actors::services::websocket::protocol`].
//!
//! The handshake is authenticated (header or `?token=`) and admitted by the hub before the
//! upgrade, so a client over the connection limit gets a 503 problem instead of a socket that
//! closes at once. The session then runs one loop over three sources: frames the hub queued for
//! this connection, frames the client sent, and the ping timer. It writes to the socket only
//! from that loop, so frames go out in the order the loop handles them.
//!
//! The client's frames are read by a task of their own and handed to the loop through a short
//! channel. Polling the socket from the loop would cost every delivered frame a read attempt,
//! and tungstenite zero-fills its read buffer before each attempt, ready or not: with 1,000
//! clients and the default 128 KiB buffer that was 128 MB of `memset` per event, most of the CPU
//! of a busy hub. The reader task is polled only when the socket has data.
//!
//! Replay: `subscribe {topic: "job:{id}", since}` registers the subscription first, then reads
//! the job log past `since` and sends it, then remembers the last sequence number sent; queued
//! live frames of that job at or below it are skipped. With the hub's ordering invariant (see
//! the hub's module docs) the client sees every event after `since` exactly once, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use grokforge_actors::events::EventEnvelope;
use grokforge_actors::names;
use grokforge_actors::services::training::TrainingServiceMessage;
use grokforge_actors::services::websocket::protocol::{
    ClientFrame, ControlFrame, encode_event_frame,
};
use grokforge_actors::services::websocket::{
    CloseReason, Connection, Delivery, SubscribeError, WebSocketHubMessage,
};
use grokforge_actors::{Topic, events::SCHEMA_VERSION};
use grokforge_config::Role;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role as SocketRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use uuid::Uuid;
use warp::Filter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::{Reply, Response};

use crate::GatewayState;
use crate::auth::{Principal, role_name};
use crate::problem::{Problem, Rejected};

/// Frames written per flush, at most.
const MAX_BATCH: usize = 64;
/// Events read from a job's log per call while replaying it to a client.
const REPLAY_PAGE: u32 = 1000;

/// Each connection's read buffer. Clients send small control frames; a longer one (up to the
/// message limit) grows the buffer as it arrives. tungstenite's default, 128 KiB, is touched in
/// full by the first read (it zero-fills the free part of the buffer before every read), and made
/// every idle connection cost 137 KiB of resident memory: 1.3 GB for 10,000 clients. 256 bytes
/// holds any frame a client normally sends (a subscribe is under 120), and at 10,000 idle
/// connections costs 9.95 KiB per connection against 13.6 at 4 KiB (RELIABILITY.md).
const READ_BUFFER_BYTES: usize = 256;

/// Limits of the WebSocket endpoint.
#[derive(Clone, Copy, Debug)]
pub struct WebSocketLimits {
    pub ping_interval: Duration,
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
}

/// A WebSocket upgrade request, checked (RFC 6455, section 4.2.1) and ready to be accepted.
pub struct Handshake {
    accept: String,
    on_upgrade: OnUpgrade,
}

/// Extracts the [`Handshake`] of a WebSocket upgrade request. Anything else is refused with a
/// problem: 426 naming what to send, or 400 without a key.
///
/// The gateway does its own upgrade, rather than use warp's `ws()`, to set each connection's
/// read buffer ([`READ_BUFFER_BYTES`]), which warp does not expose. The requests warp's filter
/// refused also came out as 500s through the gateway's rejection handler.
pub fn handshake() -> impl Filter<Extract = (Handshake,), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::ext::optional::<OnUpgrade>())
        .and_then(
            |headers: HeaderMap, on_upgrade: Option<OnUpgrade>| async move {
                check_handshake(&headers, on_upgrade)
                    .map_err(|problem| warp::reject::custom(Rejected(problem)))
            },
        )
}

fn check_handshake(
    headers: &HeaderMap,
    on_upgrade: Option<OnUpgrade>,
) -> Result<Handshake, Problem> {
    // Both headers are comma-separated lists of case-insensitive tokens.
    let lists = |name: &str, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    };
    if !lists("connection", "upgrade") || !lists("upgrade", "websocket") {
        return Err(Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "/ws is a WebSocket endpoint: send a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
        )
        .with_header("upgrade", "websocket"));
    }
    if headers
        .get("sec-websocket-version")
        .is_none_or(|version| version != "13")
    {
        return Err(Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is spoken here (Sec-WebSocket-Version: 13)",
        )
        .with_header("sec-websocket-version", "13"));
    }
    let key = headers
        .get("sec-websocket-key")
        .filter(|key| is_handshake_key(key.as_bytes()));
    let Some(key) = key else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs a Sec-WebSocket-Key header: 16 random bytes in base64",
        ));
    };
    let Some(on_upgrade) = on_upgrade else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded to a WebSocket",
        ));
    };
    Ok(Handshake {
        accept: derive_accept_key(key.as_bytes()),
        on_upgrade,
    })
}

/// Whether `key` is what RFC 6455 §4.1 asks a client to send: 16 bytes in base64, which is 22
/// characters, the last of them carrying 2 bits (so one of `AQgw`), then `==`.
fn is_handshake_key(key: &[u8]) -> bool {
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24
        && key[..21].iter().all(base64)
        && b"AQgw".contains(&key[21])
        && &key[22..] == b"=="
}

/// Admits the connection with the hub, then upgrades.
///
/// `caller` is `None` only if the route is declared open to anyone (`routes::WEBSOCKET` asks for
/// a token): such a session may subscribe to no topic that needs a role.
pub async fn upgrade(
    handshake: Handshake,
    caller: Option<Principal>,
    state: Arc<GatewayState>,
) -> Result<Response, warp::Rejection> {
    let connection = state
        .call_service(names::WEBSOCKET_HUB, WebSocketHubMessage::Connect, |full| {
            Problem::unavailable(full.to_string(), 5)
        })
        .await;
    let connection = match connection {
        Ok(connection) => connection,
        Err(problem) => return Ok(problem.into_response()),
    };
    let limits = state.websocket;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes));
    let Handshake { accept, on_upgrade } = handshake;
    // Hyper hands the connection over once the 101 below has been written.
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    SocketRole::Server,
                    Some(config),
                )
                .await;
                Session::new(state, caller, connection).run(socket).await;
            }
            // Dropping `connection` takes it off the hub.
            Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
        }
    });
    let reply = warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS);
    let reply = warp::reply::with_header(reply, "connection", "upgrade");
    let reply = warp::reply::with_header(reply, "upgrade", "websocket");
    Ok(warp::reply::with_header(reply, "sec-websocket-accept", accept).into_response())
}

/// How a session ended: the close frame to send (if the peer can still get one) and the
/// metric label (`None` when the hub ended the connection and counted it already).
struct Ending {
    close: Option<(u16, String)>,
    label: Option<&'static str>,
}

impl Ending {
    fn quietly(label: &'static str) -> Ending {
        Ending {
            close: None,
            label: Some(label),
        }
    }

    fn with(code: u16, reason: impl Into<String>, label: &'static str) -> Ending {
        Ending {
            close: Some((code, reason.into())),
            label: Some(label),
        }
    }

    /// The hub ended the connection, for `reason`.
    fn by_hub(reason: Option<CloseReason>) -> Ending {
        let reason = reason.unwrap_or(CloseReason::HubRestarted);
        let code = match reason {
            CloseReason::SlowConsumer { .. } => 1008,
            CloseReason::HubRestarted => 1012,
        };
        Ending {
            close: Some((code, reason.to_string())),
            label: None,
        }
    }
}

struct Session {
    state: Arc<GatewayState>,
    caller: Option<Principal>,
    connection: Connection,
    /// Per job topic, the last sequence number sent: queued frames at or below it are replays'
    /// duplicates.
    sent_up_to: HashMap<Uuid, u64>,
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;
type Sink = futures::stream::SplitSink<Socket, Message>;

/// What the reader task hands the session: a client frame, or the error that ended reading
/// (the end of the stream closes the channel).
type ClientRead = Result<Message, tungstenite::Error>;

/// Client frames read ahead of the session loop. The client only sends small control frames;
/// past this the reader waits for the loop, and the socket's receive buffer fills up.
const CLIENT_FRAMES_QUEUED: usize = 8;

/// Forwards the client's frames to the session until the stream ends, fails, or the session
/// goes away.
async fn read_client(
    mut stream: futures::stream::SplitStream<Socket>,
    frames: tokio::sync::mpsc::Sender<ClientRead>,
) {
    while let Some(read) = stream.next().await {
        let failed = read.is_err();
        if frames.send(read).await.is_err() || failed {
            return;
        }
    }
}

impl Session {
    fn new(state: Arc<GatewayState>, caller: Option<Principal>, connection: Connection) -> Session {
        Session {
            state,
            caller,
            connection,
            sent_up_to: HashMap::new(),
        }
    }

    async fn run(mut self, socket: Socket) {
        let (mut sink, stream) = socket.split();
        let (client_frames, mut from_client) = tokio::sync::mpsc::channel(CLIENT_FRAMES_QUEUED);
        let reader = tokio::spawn(read_client(stream, client_frames));
        let limits = self.state.websocket;
        let hello = ControlFrame::ConnectionEstablished {
            connection_id: self.connection.id(),
            node_id: self.state.node_id.clone(),
            role: self
                .caller
                .map_or("anonymous", |caller| role_name(caller.role))
                .to_string(),
            schema_version: SCHEMA_VERSION,
            max_subscriptions: limits.max_subscriptions as u64,
            max_message_bytes: limits.max_message_bytes as u64,
            ping_interval_ms: limits.ping_interval.as_millis() as u64,
        };
        let ending = match self.send(&mut sink, hello.to_json()).await {
            Ok(()) => self.serve(&mut sink, &mut from_client).await,
            Err(ending) => ending,
        };
        reader.abort();
        // The close frame queues behind whatever the kernel still holds for the client; a
        // client that never reads again gets no more than the write deadline.
        let write_timeout = self.state.websocket.ping_interval;
        if let Some((code, reason)) = ending.close {
            let _ = tokio::time::timeout(write_timeout, sink.send(close_frame(code, reason))).await;
        }
        let _ = tokio::time::timeout(write_timeout, sink.close()).await;
        if let Some(label) = ending.label {
            self.state
                .metrics
                .websocket_disconnects_total
                .with_label_values(&[label])
                .inc();
        }
        tracing::debug!(connection = self.connection.id(), reason = ?ending.label, "websocket closed");
    }

    async fn serve(
        &mut self,
        sink: &mut Sink,
        from_client: &mut tokio::sync::mpsc::Receiver<ClientRead>,
    ) -> Ending {
        let interval = self.state.websocket.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        // One future for the whole session: every session waits on the same token, and a
        // fresh `cancelled()` per loop turn would register and unregister a waiter under that
        // token's lock twice per frame, for every client.
        let shutdown = self.state.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        let mut deliveries = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                received = self.connection.recv_many(&mut deliveries, MAX_BATCH) => {
                    if received == 0 {
                        return Ending::by_hub(self.connection.close_reason());
                    }
                    // Whatever was queued goes out together, in one flush: one write per burst
                    // instead of one per frame is what keeps a busy fan-out from being all
                    // system calls.
                    let oldest = deliveries[0].queued_at;
                    let batch: Vec<String> = deliveries
                        .drain(..)
                        .filter(|delivery| self.is_new(delivery))
                        .map(|delivery| delivery.text.clone())
                        .collect();
                    if batch.is_empty() {
                        continue;
                    }
                    if let Err(ending) = self.send_all(sink, batch).await {
                        return ending;
                    }
                    self.state
                        .metrics
                        .websocket_delivery_seconds
                        .observe(oldest.elapsed().as_secs_f64());
                }
                frame = from_client.recv() => {
                    last_heard = Instant::now();
                    let message = match frame {
                        None => return Ending::quietly("client"),
                        Some(Err(error)) => {
                            tracing::debug!(%error, "websocket read failed");
                            // Over-long frames end here: tungstenite refuses them while reading.
                            return Ending::with(1009, "frame too large or malformed", "protocol_error");
                        }
                        Some(Ok(message)) => message,
                    };
                    let reply = match message {
                        Message::Close(_) => return Ending::quietly("client"),
                        // tungstenite answers pings itself.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                        Message::Text(text) => self.handle(sink, text.as_str()).await,
                        Message::Binary(_) => Ok(Some(ControlFrame::error(
                            "binary frames are not part of the protocol; send JSON text frames",
                        ))),
                    };
                    match reply {
                        Ok(Some(frame)) => {
                            if let Err(ending) = self.send(sink, frame.to_json()).await {
                                return ending;
                            }
                        }
                        Ok(None) => {}
                        Err(ending) => return ending,
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > interval * 2 {
                        return Ending::with(1001, "no answer to pings", "ping_timeout");
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        return Ending::quietly("send_failed");
                    }
                }
                _ = &mut shutdown => {
                    return Ending::with(1001, "node shutting down", "shutdown");
                }
            }
        }
    }

    /// Whether a queued frame is news to the client: a job event at or below what a replay
    /// already sent is not.
    fn is_new(&mut self, delivery: &Delivery) -> bool {
        if let (Topic::Job(job), Some(seq)) = (&delivery.topic, delivery.seq)
            && let Some(last) = self.sent_up_to.get_mut(job)
        {
            if seq <= *last {
                return false;
            }
            *last = seq;
        }
        true
    }

    async fn send(&self, sink: &mut Sink, text: String) -> Result<(), Ending> {
        self.send_all(sink, vec![text]).await
    }

    /// Writes frames and flushes once. A client that takes longer than the ping interval to
    /// accept them is disconnected, and so is one the hub drops meanwhile: a session never
    /// waits forever on a client that stopped reading.
    async fn send_all(&self, sink: &mut Sink, texts: Vec<String>) -> Result<(), Ending> {
        if texts.is_empty() {
            return Ok(());
        }
        let count = texts.len() as u64;
        let write = async {
            for text in texts {
                sink.feed(Message::text(text)).await?;
            }
            sink.flush().await
        };
        tokio::pin!(write);
        // Most writes complete on the first poll, the socket having room: those need neither a
        // timer nor a waiter on the hub's token, two registrations per write that a busy
        // fan-out pays for every client. Only a write that has to wait races them.
        let written = match futures::poll!(write.as_mut()) {
            std::task::Poll::Ready(written) => Ok(written),
            std::task::Poll::Pending => {
                let write_timeout = self.state.websocket.ping_interval;
                tokio::select! {
                    biased;
                    _ = self.connection.closed() => {
                        return Err(Ending::by_hub(self.connection.close_reason()));
                    }
                    written = tokio::time::timeout(write_timeout, write) => written,
                }
            }
        };
        match written {
            Ok(Ok(())) => {
                self.state
                    .metrics
                    .websocket_messages_sent_total
                    .inc_by(count);
                Ok(())
            }
            Ok(Err(_)) => Err(Ending::quietly("send_failed")),
            Err(_) => Err(Ending::with(
                1008,
                "the client did not read in time",
                "write_timeout",
            )),
        }
    }

    /// Handles one client text frame; returns the frame to answer with, if any (a replay sends
    /// its own frames before returning).
    async fn handle(
        &mut self,
        sink: &mut Sink,
        text: &str,
    ) -> Result<Option<ControlFrame>, Ending> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(message) => return Ok(Some(ControlFrame::error(message))),
        };
        match frame {
            ClientFrame::Ping {} => Ok(Some(ControlFrame::Pong)),
            ClientFrame::Unsubscribe { topic: name } => {
                let Ok(topic) = Topic::parse(&name) else {
                    return Ok(Some(topic_error(&name, format!("unknown topic `{name}`"))));
                };
                if let Topic::Job(job) = topic {
                    self.sent_up_to.remove(&job);
                }
                Ok(Some(if self.connection.unsubscribe(&topic) {
                    ControlFrame::Unsubscribed { topic: name }
                } else {
                    topic_error(&name, format!("not subscribed to `{name}`"))
                }))
            }
            ClientFrame::Subscribe { topic: name, since } => {
                self.subscribe(sink, name, since).await
            }
        }
    }

    async fn subscribe(
        &mut self,
        sink: &mut Sink,
        name: String,
        since: Option<u64>,
    ) -> Result<Option<ControlFrame>, Ending> {
        let topic = match Topic::parse(&name) {
            Ok(topic) => topic,
            Err(message) => return Ok(Some(topic_error(&name, message))),
        };
        if topic == Topic::AdminAlerts && !self.caller.is_some_and(|c| c.may(Role::Admin)) {
            return Ok(Some(topic_error(
                &name,
                "admin_alerts needs the admin role".to_string(),
            )));
        }
        let job = match (&topic, since) {
            (Topic::Job(job), _) => Some(*job),
            (_, Some(_)) => {
                return Ok(Some(topic_error(
                    &name,
                    "`since` needs a job:{id} topic: only job events have a durable log to replay"
                        .to_string(),
                )));
            }
            (_, None) => None,
        };
        match self.connection.subscribe(topic.clone()) {
            Ok(_) => {}
            Err(error @ SubscribeError::TooMany { .. }) => {
                return Ok(Some(topic_error(&name, error.to_string())));
            }
            Err(SubscribeError::Closed(reason)) => return Err(Ending::by_hub(Some(reason))),
        }
        let Some(job) = job else {
            return Ok(Some(ControlFrame::SubscriptionConfirmed {
                topic: name,
                replayed: None,
            }));
        };

        // Registered first, read second: see the module docs. The job's record says how far
        // its log goes now; that much is replayed from the log, a page at a time (a log of a
        // million events never sits in memory whole), and whatever comes after arrives live.
        let record = self
            .state
            .call_service(
                names::TRAINING_SERVICE,
                |reply| TrainingServiceMessage::GetJob(job, reply),
                crate::jobs::training_problem,
            )
            .await;
        let end = match record {
            Ok(record) => record.last_event_seq,
            Err(problem) => {
                self.connection.unsubscribe(&topic);
                let detail = problem.detail.unwrap_or(problem.title);
                return Ok(Some(topic_error(&name, detail)));
            }
        };
        let Some(since) = since else {
            // Live only: whatever seq comes next is new to this client.
            self.sent_up_to.remove(&job);
            return Ok(Some(ControlFrame::SubscriptionConfirmed {
                topic: name,
                replayed: None,
            }));
        };
        let confirmed = ControlFrame::SubscriptionConfirmed {
            topic: name.clone(),
            replayed: Some(end.saturating_sub(since)),
        };
        self.send(sink, confirmed.to_json()).await?;
        let mut last = since;
        while last < end {
            let page = self
                .state
                .call_service(
                    names::TRAINING_SERVICE,
                    |reply| TrainingServiceMessage::JobEvents {
                        job_id: job,
                        since: last,
                        limit: REPLAY_PAGE,
                        reply,
                    },
                    crate::jobs::training_problem,
                )
                .await;
            let events = match page {
                Ok(events) => events,
                Err(problem) => {
                    // The client has the events up to `last`; it resubscribes from there.
                    self.connection.unsubscribe(&topic);
                    self.sent_up_to.remove(&job);
                    let detail = problem.detail.unwrap_or(problem.title);
                    return Ok(Some(topic_error(
                        &name,
                        format!("the replay stopped after seq {last}: {detail}"),
                    )));
                }
            };
            let Some(page_end) = events.last().map(|event| event.seq) else {
                break;
            };
            for event in events.into_iter().take_while(|event| event.seq <= end) {
                let envelope: EventEnvelope = match serde_json::from_value(event.envelope) {
                    Ok(envelope) => envelope,
                    Err(error) => {
                        tracing::error!(%job, seq = event.seq, %error, "unreadable event in the job log");
                        continue;
                    }
                };
                match encode_event_frame(&name, &envelope) {
                    Ok(text) => self.send(sink, text).await?,
                    Err(error) => {
                        tracing::error!(%job, seq = event.seq, %error, "cannot encode event")
                    }
                }
            }
            last = page_end.min(end).max(last);
            if page_end >= end {
                break;
            }
        }
        self.sent_up_to.insert(job, last);
        Ok(None)
    }
}

fn close_frame(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }))
}

fn topic_error(topic: &str, message: String) -> ControlFrame {
    ControlFrame::Error {
        message,
        topic: Some(topic.to_string()),
    }
}
