package l4handler

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// BackendState is the administrative state of a backend, set through
// PUT /between/servers/{name}/backends/{host:port}/state.
type BackendState string

// The backend states.
const (
	// StateReady is the default: the backend takes new connections when healthy.
	StateReady BackendState = "ready"
	// StateDrain takes the backend out of elections; open connections continue.
	StateDrain BackendState = "drain"
	// StateMaint is drain with the backend's health checks paused; they start
	// afresh (from the initial status) when the backend is set ready again.
	StateMaint BackendState = "maint"
)

// valid reports whether s is one of the three states.
func (s BackendState) valid() bool {
	return s == StateReady || s == StateDrain || s == StateMaint
}

// backendStates holds every state other than ready, by handler name and
// backend address. It lives outside the per-config state so that it survives
// rediscovery, reloads and config changes of the handler; a state set for a
// backend that discovery does not list (yet) applies when it appears. Entries
// are only made through the admin API and setting ready removes them, so the
// map stays as small as what operators set.
var backendStates = &stateStore{byHandler: map[string]map[string]BackendState{}}

// stateStore is a set of backend states keyed by handler name and address.
type stateStore struct {
	mu        sync.Mutex
	byHandler map[string]map[string]BackendState
}

// get returns the state of addr in handler; ready when none was set.
func (s *stateStore) get(handler, addr string) BackendState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.byHandler[handler][addr]; ok {
		return st
	}
	return StateReady
}

// set records the state of addr in handler.
func (s *stateStore) set(handler, addr string, st BackendState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.byHandler[handler]
	if st == StateReady {
		delete(m, addr)
		if len(m) == 0 {
			delete(s.byHandler, handler)
		}
		return
	}
	if m == nil {
		m = map[string]BackendState{}
		s.byHandler[handler] = m
	}
	m[addr] = st
}

// of returns a copy of the states set in handler.
func (s *stateStore) of(handler string) map[string]BackendState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]BackendState, len(s.byHandler[handler]))
	for addr, st := range s.byHandler[handler] {
		out[addr] = st
	}
	return out
}

// checked returns the backends whose health is checked: all but those in
// maintenance. The scheduler stops checking (and forgets) a backend that
// leaves this list, which is how maintenance pauses its checks.
func checked(handler string, backends []*backend.Backend) []*backend.Backend {
	states := backendStates.of(handler)
	if len(states) == 0 {
		return backends
	}
	out := make([]*backend.Backend, 0, len(backends))
	for _, b := range backends {
		if states[b.Address()] != StateMaint {
			out = append(out, b)
		}
	}
	return out
}

// applyBackendStates makes the state's health checks and election snapshot
// follow the current backend states.
func (st *state) applyBackendStates() {
	st.mu.Lock()
	backends := st.sortedLocked()
	st.mu.Unlock()
	st.health.Update(checked(st.name, backends))
	st.rebuild()
}

// BackendStateInfo is the body of GET (and the answer to PUT)
// /between/servers/{name}/backends/{host:port}/state.
type BackendStateInfo struct {
	Backend    string       `json:"backend"`    // host:port
	State      BackendState `json:"state"`      // ready, drain or maint
	Discovered bool         `json:"discovered"` // in the handler's current discovery result
}

// serveBackendState answers GET and PUT on a backend's state.
func serveBackendState(w http.ResponseWriter, r *http.Request, name, addr string) error {
	if r.Method != http.MethodGet && r.Method != http.MethodPut {
		return methodNotAllowed(w, http.MethodGet, http.MethodPut)
	}
	h, ok := running.get(name)
	if !ok {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errUnknownServer(name)}
	}
	if err := checkBackendAddress(addr); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}
	if r.Method == http.MethodPut {
		var body struct {
			State *BackendState `json:"state"`
		}
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxStateBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			return bodyError(err)
		}
		if body.State == nil {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: adminError("state: required (ready, drain or maint)")}
		}
		if !body.State.valid() {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: adminError(fmt.Sprintf("state: %q is not one of ready, drain, maint", *body.State))}
		}
		backendStates.set(name, addr, *body.State)
		for _, st := range statesOf(name) {
			st.applyBackendStates()
		}
		h.logger.Info("backend state set", zap.String("backend", addr), zap.String("state", string(*body.State)))
	}
	h.state.mu.Lock()
	_, discovered := h.state.discovered[addr]
	h.state.mu.Unlock()
	return writeJSON(w, BackendStateInfo{Backend: addr, State: backendStates.get(name, addr), Discovered: discovered})
}

// statesOf returns the distinct states of every started handler of that
// name: the newest config's and those of configs still shutting down.
func statesOf(name string) []*state {
	running.mu.Lock()
	defer running.mu.Unlock()
	var out []*state
	for _, h := range running.byName[name] {
		if h.state != nil && !containsState(out, h.state) {
			out = append(out, h.state)
		}
	}
	return out
}

func containsState(list []*state, st *state) bool {
	for _, x := range list {
		if x == st {
			return true
		}
	}
	return false
}

// checkBackendAddress accepts host:port with a numeric port, as backends
// are addressed (IPv6 hosts in brackets).
func checkBackendAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("backend: %q is not host:port: %w", addr, err)
	}
	if n, err := strconv.Atoi(port); host == "" || err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("backend: %q is not host:port with a port in 1-65535", addr)
	}
	if net.JoinHostPort(host, port) != addr {
		return fmt.Errorf("backend: %q is not in canonical host:port form", addr)
	}
	return nil
}

// methodNotAllowed answers 405 with the allowed methods.
func methodNotAllowed(w http.ResponseWriter, allowed ...string) error {
	for _, m := range allowed {
		w.Header().Add("Allow", m)
	}
	return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errMethod}
}

// stateOr returns the state of addr in states (from stateStore.of), ready
// when it has none.
func stateOr(states map[string]BackendState, addr string) BackendState {
	if st, ok := states[addr]; ok {
		return st
	}
	return StateReady
}
