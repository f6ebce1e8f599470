// Package udpsession relays the datagrams of one UDP client to backends
// through virtual sessions, gobetween's model of a UDP "connection".
//
// A client session is everything one client address sends to a listener; a
// listener (or caddy-l4) hands it over as a Conn, and Serve runs it. Inside
// it, a virtual session binds the client to one elected backend: it has its
// own connected UDP socket to that backend (so the backend's replies come
// back to it alone), one goroutine that relays the replies to the client,
// and counts of the requests it took and the replies it relayed. It ends on
// its own limits while the client session goes on, and the client's next
// datagram elects a backend for a new virtual session, so no datagram is
// lost to a session ending:
//
//   - max_requests N > 1: a virtual session takes at most N datagrams, then
//     only waits for the replies still due; the next datagram elects again.
//   - max_requests 1 (fire-and-forget): every datagram is elected on its own
//     and sent through a Forwarder's shared socket to the backend; replies
//     are dropped.
//   - max_responses M: a virtual session ends once it has relayed M replies
//     for each datagram it sent, then frees the backend and parks its socket
//     for the client's next virtual session to the same backend (at most 4
//     per client session, closed after the idle timeout), so a DNS-style
//     client costs no socket or goroutine per request.
//   - idle (the smaller non-zero of the client and backend idle timeouts): a
//     virtual session ends when nothing moved through it for that long, and
//     the client session ends when nothing moved either way for that long.
//   - transparent: backend sockets are bound to the client's own address
//     (DialTransparent), so backends see the real client.
//
// The package has no Caddy dependency: it needs a Conn for the client, an
// Elector for the election and passive health, and counters to fill.
package udpsession
