//! A TCP relay of our own in a client's path, which can cut or freeze any one of the
//! connections it carried.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::eventually;

/// A TCP relay to `upstream`: every connection it accepted, in order, each cut by aborting
/// its task (both sockets close), or on the client's side only (the server's stays open and
/// silent, as when a path loses one direction), or frozen (both stay open and silent, as
/// when a path drops everything).
pub struct Relay {
    pub addr: SocketAddr,
    relayed: Arc<Mutex<Vec<Relayed>>>,
}

/// One relayed connection: its task, what closes its client side alone, and what freezes it.
struct Relayed {
    task: AbortHandle,
    half_cut: Arc<Notify>,
    freeze: Arc<Notify>,
}

impl Relay {
    pub async fn to(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let relayed: Arc<Mutex<Vec<Relayed>>> = Arc::default();
        let list = relayed.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (half_cut, freeze) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
                let (cut, frozen) = (half_cut.clone(), freeze.clone());
                let task = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    let half = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                        () = cut.notified() => true,
                        () = frozen.notified() => false,
                    };
                    // A half cut closes the client's side; the rest is held open, carrying
                    // nothing, until the relay's task is aborted.
                    let _kept = ((!half).then_some(client), server);
                    std::future::pending::<()>().await;
                });
                list.lock().unwrap().push(Relayed { task: task.abort_handle(), half_cut, freeze });
            }
        });
        Self { addr, relayed }
    }

    pub fn count(&self) -> usize {
        self.relayed.lock().unwrap().len()
    }

    /// Waits until `n` connections went through.
    pub async fn until_count(&self, n: usize) {
        eventually(&format!("{n} connections through the relay"), || async { self.count() >= n }).await;
    }

    pub fn cut(&self, index: usize) {
        self.relayed.lock().unwrap()[index].task.abort();
    }

    /// Closes connection `index` toward the client only: the server hears nothing.
    pub fn cut_client_side(&self, index: usize) {
        self.relayed.lock().unwrap()[index].half_cut.notify_one();
    }

    /// Stops carrying anything on connection `index`, both ways, and closes neither side.
    pub fn freeze(&self, index: usize) {
        self.relayed.lock().unwrap()[index].freeze.notify_one();
    }
}
