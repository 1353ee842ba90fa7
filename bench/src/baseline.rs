//! The bare limit of this box: a minimal tokio SSE broadcast server with no NATS, no auth
//! and no JSON handling. `POST /publish` broadcasts its body as one `data:` frame to every
//! `GET /stream`; the same load client and publisher measure it and Spool Live (the
//! publisher posts the event JSON the delivery would send, so the frames are the same size).
//! Each stream writes the frames it has ready in one write.

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// The most bytes of ready frames a stream gathers into one write.
const MAX_WRITE: usize = 64 * 1024;

pub async fn serve(listener: TcpListener) {
    let (tx, _) = broadcast::channel::<Bytes>(1024);
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        tokio::spawn(handle(socket, tx.clone()));
    }
}

async fn handle(socket: TcpStream, tx: broadcast::Sender<Bytes>) {
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let request = line.clone();
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        if request.starts_with("GET /stream") {
            let mut rx = tx.subscribe();
            let (mut read, mut write) = reader.into_inner().into_split();
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";
            if write.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut scratch = [0u8; 64];
            loop {
                tokio::select! {
                    received = rx.recv() => match received {
                        Ok(frame) => {
                            // The frames already waiting go out with this one in one write,
                            // as any server that buffers its output does (Spool Live's hyper
                            // too); a lone frame is written as it is.
                            let mut ready: Option<Vec<u8>> = None;
                            while ready.as_ref().map_or(0, Vec::len) < MAX_WRITE {
                                match rx.try_recv() {
                                    Ok(more) => ready
                                        .get_or_insert_with(|| frame.to_vec())
                                        .extend_from_slice(&more),
                                    Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                                    Err(_) => break,
                                }
                            }
                            let bytes = ready.as_deref().unwrap_or(&frame);
                            if write.write_all(bytes).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    // The client went away (EOF or error): free the connection now, as a
                    // real server does, not at the next write.
                    gone = read.read(&mut scratch) => {
                        if matches!(gone, Ok(0) | Err(_)) {
                            return;
                        }
                    }
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        if request.starts_with("POST /publish") {
            let mut frame = Vec::with_capacity(body.len() + 8);
            frame.extend_from_slice(b"data: ");
            frame.extend_from_slice(&body);
            frame.extend_from_slice(b"\n\n");
            let _ = tx.send(Bytes::from(frame));
        }
        let answer = "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
        if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}
