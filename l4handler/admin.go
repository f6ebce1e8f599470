package l4handler

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// running knows the started handlers by name.
var running = &registry{byName: map[string][]*Handler{}}

// registry holds, per handler name, the handlers of the started configs in
// start order; the newest one answers for the name. A config whose start
// fails is stopped again and takes only its own handlers out, so the running
// config's handler stays listed.
type registry struct {
	mu     sync.Mutex
	byName map[string][]*Handler
}

// add makes h the newest handler of its name.
func (r *registry) add(h *Handler) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byName[h.Name] = append(r.byName[h.Name], h)
}

// remove takes h out.
func (r *registry) remove(h *Handler) {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := slices.DeleteFunc(r.byName[h.Name], func(x *Handler) bool { return x == h })
	if len(list) == 0 {
		delete(r.byName, h.Name)
		return
	}
	r.byName[h.Name] = list
}

// get returns the newest handler of that name.
func (r *registry) get(name string) (*Handler, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := r.byName[name]
	if len(list) == 0 {
		return nil, false
	}
	return list[len(list)-1], true
}

// all returns the newest handler of every name, sorted by name.
func (r *registry) all() []*Handler {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Handler, 0, len(r.byName))
	for _, list := range r.byName {
		out = append(out, list[len(list)-1])
	}
	slices.SortFunc(out, func(a, b *Handler) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// AdminAPI serves Between's endpoints on Caddy's admin API:
//
//	GET /between/servers              every running between handler: name, where it
//	                                  is configured, its config and live totals
//	GET /between/servers/{name}/stats live statistics (gobetween's shape)
//	GET /between/info                 versions, pid, start time, uptime
//	GET /between/servers/{name}       one handler's entry of GET /between/servers
//	GET|PUT /between/servers/{name}/backends/{host:port}/state
//	                                  a backend's state: ready, drain or maint
//	GET /between/status               live HTML status page
//
// Caddy loads it automatically with the admin endpoint.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.between",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (a AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/between/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// ServerStats is the body of GET /between/servers/{name}/stats (gobetween's
// name for what Between calls a handler).
type ServerStats struct {
	ActiveConnections  int64          `json:"active_connections"`  // open client connections
	TotalConnections   uint64         `json:"total_connections"`   // clients served since start
	RefusedConnections uint64         `json:"refused_connections"` // clients refused (access, limits, no backend)
	RxTotal            uint64         `json:"rx_total"`            // bytes backend -> client
	TxTotal            uint64         `json:"tx_total"`            // bytes client -> backend
	RxSecond           uint64         `json:"rx_second"`           // rx per second over the last 2 s
	TxSecond           uint64         `json:"tx_second"`           // tx per second over the last 2 s
	Backends           []BackendStats `json:"backends"`            // discovered backends, by host:port
}

// HandlerInfo is one entry of GET /between/servers.
type HandlerInfo struct {
	Name               string          `json:"name"`                // handler name
	Locations          []Location      `json:"locations"`           // where it is configured
	Config             json.RawMessage `json:"config"`              // its JSON config
	ActiveConnections  int64           `json:"active_connections"`  // open client connections
	TotalConnections   uint64          `json:"total_connections"`   // clients served since start
	RefusedConnections uint64          `json:"refused_connections"` // clients refused
	RxTotal            uint64          `json:"rx_total"`            // bytes backend -> client
	TxTotal            uint64          `json:"tx_total"`            // bytes client -> backend
}

// BackendStats is one backend in ServerStats, sorted by host:port.
type BackendStats struct {
	Host           string        `json:"host"`            // IP or name
	Port           string        `json:"port"`            // port number
	Priority       int           `json:"priority"`        // priority group
	Weight         int           `json:"weight"`          // weight in its group
	MaxConnections int           `json:"max_connections"` // 0 = unlimited
	SNI            string        `json:"sni"`             // TLS server name it serves
	State          BackendState  `json:"state"`           // ready, drain or maint (admin API)
	Stats          BackendCounts `json:"stats"`           // live state and counters
}

// BackendCounts are a backend's live state and counters.
type BackendCounts struct {
	Live       bool `json:"live"`       // healthy (takes new connections)
	Discovered bool `json:"discovered"` // in the current discovery result
	// Counters: active_connections, total_connections,
	// refused_connections (failed dials), rx, tx, rx_second, tx_second.
	backend.Snapshot
}

func (AdminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/between/"), "/"), "/")
	switch {
	case len(parts) == 1 && parts[0] == "info":
		return serveInfo(w, r)
	case len(parts) == 1 && parts[0] == "status":
		return serveStatus(w, r)
	case len(parts) == 5 && parts[0] == "servers" && parts[2] == "backends" && parts[4] == "state":
		return serveBackendState(w, r, parts[1], parts[3])
	case len(parts) == 2 && parts[0] == "servers" && parts[1] != "" && r.Method != http.MethodGet:
		return serveServerChange(w, r, parts[1])
	case !knownGetPath(parts):
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errNotFound}
	case r.Method != http.MethodGet:
		return methodNotAllowed(w, http.MethodGet)
	case len(parts) == 1 && parts[0] == "servers":
		list := []HandlerInfo{}
		for _, h := range running.all() {
			list = append(list, handlerInfo(h))
		}
		return writeJSON(w, list)
	case len(parts) == 2 && parts[0] == "servers":
		return serveServer(w, r, parts[1])
	case len(parts) == 3 && parts[0] == "servers" && parts[2] == "stats":
		h, ok := running.get(parts[1])
		if !ok {
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errUnknownServer(parts[1])}
		}
		return writeJSON(w, h.state.snapshot())
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errNotFound}
}

// knownGetPath reports whether parts (the path after /between/) is one of the
// read-only endpoints: servers, servers/{name}, servers/{name}/stats.
func knownGetPath(parts []string) bool {
	return parts[0] == "servers" && (len(parts) <= 2 || len(parts) == 3 && parts[2] == "stats")
}

// snapshot collects the handler's statistics.
func (st *state) snapshot() ServerStats {
	s := st.stats.Snapshot()
	out := ServerStats{
		ActiveConnections: s.Active, TotalConnections: s.Total, RefusedConnections: s.Refused,
		RxTotal: s.Rx, TxTotal: s.Tx, RxSecond: s.RxSecond, TxSecond: s.TxSecond,
		Backends: []BackendStats{},
	}
	states := backendStates.of(st.name)
	st.mu.Lock()
	backends := st.sortedLocked()
	st.mu.Unlock()
	sort.Slice(backends, func(i, j int) bool { return backends[i].Address() < backends[j].Address() })
	for _, b := range backends {
		out.Backends = append(out.Backends, BackendStats{
			Host: b.Host, Port: b.Port, Priority: b.Priority, Weight: b.Weight,
			MaxConnections: b.MaxConnections, SNI: b.SNI, State: stateOr(states, b.Address()),
			Stats: BackendCounts{Live: st.health.Healthy(b.Address()), Discovered: true, Snapshot: b.Stats.Snapshot()},
		})
	}
	return out
}

// bodyError is the admin API's answer to a request body that could not be
// read: 413 when it is over the endpoint's limit (named in the message), 400
// otherwise.
func bodyError(err error) error {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return caddy.APIError{HTTPStatus: http.StatusRequestEntityTooLarge,
			Err: fmt.Errorf("body: larger than this endpoint's limit of %d bytes", tooLarge.Limit)}
	}
	return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("body: %w", err)}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

type adminError string

// Error returns the message.
func (e adminError) Error() string { return string(e) }

// Request body limits of the admin endpoints: a server config (JSON or
// gobetween's form) and a backend state.
const (
	maxServerBody = 1 << 20
	maxStateBody  = 4 << 10
)

const (
	errMethod   = adminError("method not allowed")
	errNotFound = adminError("not found")
)

func errUnknownServer(name string) error { return adminError("unknown between handler " + name) }

var _ caddy.AdminRouter = (*AdminAPI)(nil)
