//! A UDP relay between agents and a controller that a test can cut, one direction at a time:
//! a link failure on demand, on loopback, without root.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

pub struct UdpProxy {
    pub addr: SocketAddr,
    /// Drop datagrams from agents to the controller.
    pub block_up: Arc<AtomicBool>,
    /// Drop datagrams from the controller to agents.
    pub block_down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl UdpProxy {
    pub fn start(upstream: SocketAddr) -> UdpProxy {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind proxy");
        front
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = front.local_addr().unwrap();
        let block_up = Arc::new(AtomicBool::new(false));
        let block_down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (up, down, st) = (block_up.clone(), block_down.clone(), stop.clone());
        thread::spawn(move || {
            let front = Arc::new(front);
            let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = front.recv_from(&mut buf) else {
                    continue;
                };
                let back = backs.entry(from).or_insert_with(|| {
                    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind back"));
                    back.connect(upstream).expect("connect upstream");
                    back.set_read_timeout(Some(Duration::from_millis(50)))
                        .unwrap();
                    let (back2, front2, down2, st2) =
                        (back.clone(), front.clone(), down.clone(), st.clone());
                    thread::spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        while !st2.load(Ordering::Relaxed) {
                            if let Ok(n) = back2.recv(&mut buf)
                                && !down2.load(Ordering::Relaxed)
                            {
                                let _ = front2.send_to(&buf[..n], from);
                            }
                        }
                    });
                    back
                });
                if !up.load(Ordering::Relaxed) {
                    let _ = back.send(&buf[..n]);
                }
            }
        });
        UdpProxy {
            addr,
            block_up,
            block_down,
            stop,
        }
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
