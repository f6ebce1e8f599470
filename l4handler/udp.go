package l4handler

import (
	"errors"
	"fmt"
	"time"

	"github.com/caddy-between/between/listeners"
	"github.com/caddy-between/between/udpsession"
)

// UDPConfig holds the settings of a between handler on a UDP listener
// (udp/ADDR or between+udp/ADDR): gobetween's virtual sessions. A client
// session (one client address) is served by a chain of virtual sessions, each
// with one elected backend; these limits say when a virtual session ends and
// the client's next datagram elects again. A UDP handler needs at least one
// of max_requests, max_responses, client_idle_timeout or
// backend_idle_timeout, as in gobetween: without any, sessions would never end.
type UDPConfig struct {
	// A virtual session takes at most this many datagrams from the client;
	// the next one elects a backend again. 1 is fire-and-forget: every
	// datagram is balanced on its own through a socket shared per backend,
	// and replies are dropped. 0 (default) = no limit.
	MaxRequests int `json:"max_requests,omitempty"`
	// A virtual session ends once it has relayed this many replies for each
	// datagram it sent (nginx's proxy_responses); the client's next datagram
	// starts a new one and is never lost. 1 suits DNS. 0 (default) = no limit.
	MaxResponses int `json:"max_responses,omitempty"`
	// Dial backends from the client's own address, so that backends see
	// it: Linux only, needs CAP_NET_ADMIN and policy routing on this host
	// that delivers the backends' replies to it (see the README).
	Transparent bool `json:"transparent,omitempty"`
	// Cap on the handler's concurrent client sessions; over it, datagrams
	// from new clients are dropped and counted. On a between+udp listener
	// it also caps the listener's session table. Default 100000.
	MaxSessions int `json:"max_sessions,omitempty"`
}

// defaultMaxSessions is max_sessions when it is not set.
const defaultMaxSessions = 100000

// defaultUDPIdle ends the client sessions of a UDP handler that sets no idle
// timeout after this long without a datagram either way (caddy-l4's own UDP
// idle_timeout default).
const defaultUDPIdle = 30 * time.Second

// provision checks the udp block of a handler on a UDP listener and fills
// in defaults.
func (u *UDPConfig) provision(h *Handler) error {
	switch {
	case u.MaxRequests < 0:
		return fmt.Errorf("udp.max_requests %d: must not be negative", u.MaxRequests)
	case u.MaxResponses < 0:
		return fmt.Errorf("udp.max_responses %d: must not be negative", u.MaxResponses)
	case u.MaxSessions < 0:
		return fmt.Errorf("udp.max_sessions %d: must not be negative", u.MaxSessions)
	}
	if u.MaxSessions == 0 {
		u.MaxSessions = defaultMaxSessions
	}
	if u.MaxRequests == 0 && u.MaxResponses == 0 && h.ClientIdleTimeout == 0 && h.BackendIdleTimeout == 0 {
		return errNoUDPLimit
	}
	return nil
}

// errNoUDPLimit is the error for a UDP handler whose sessions would never end.
var errNoUDPLimit = errors.New("udp: a UDP handler needs udp.max_requests, udp.max_responses, client_idle_timeout or backend_idle_timeout, else its sessions never end")

// startUDP prepares this config's UDP handlers before they serve: transparent
// mode must be possible (a clear start error otherwise, rather than failed
// dials later), and each between+udp listener caps its session table at the
// largest max_sessions of the handlers on it.
func (a *App) startUDP(handlers []*Handler) error {
	caps := map[string]int{}
	for _, h := range handlers {
		if h.udp == nil {
			continue
		}
		if h.udp.cfg.Transparent {
			if err := udpsession.CheckTransparent(); err != nil {
				return fmt.Errorf("between handler %q: udp.transparent: %w", h.Name, err)
			}
		}
		for _, l := range a.locations(h.Name) {
			for _, addr := range l.Listen {
				if listeners.IsNetworkUDP(addr) {
					caps[addr] = max(caps[addr], int(h.udp.maxSessions))
				}
			}
		}
	}
	for addr, n := range caps {
		listeners.SetUDPMaxSessions(addr, n)
	}
	return nil
}
