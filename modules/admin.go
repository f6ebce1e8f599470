package modules

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// running maps a server name to the Server of the newest started config.
var running sync.Map // string -> *Server

// AdminAPI serves Between's endpoints on Caddy's admin API:
//
//	GET /between/servers              names of the running servers
//	GET /between/servers/{name}/stats live statistics (gobetween's shape)
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

// ServerStats is the body of GET /between/servers/{name}/stats.
type ServerStats struct {
	ActiveConnections  int64          `json:"active_connections"`
	TotalConnections   uint64         `json:"total_connections"`
	RefusedConnections uint64         `json:"refused_connections"`
	RxTotal            uint64         `json:"rx_total"`
	TxTotal            uint64         `json:"tx_total"`
	RxSecond           uint64         `json:"rx_second"`
	TxSecond           uint64         `json:"tx_second"`
	Backends           []BackendStats `json:"backends"`
}

// BackendStats is one backend in ServerStats, sorted by host:port.
type BackendStats struct {
	Host           string        `json:"host"`
	Port           string        `json:"port"`
	Priority       int           `json:"priority"`
	Weight         int           `json:"weight"`
	MaxConnections int           `json:"max_connections"`
	SNI            string        `json:"sni"`
	Stats          BackendCounts `json:"stats"`
}

// BackendCounts are a backend's live state and counters.
type BackendCounts struct {
	Live               bool   `json:"live"`
	Discovered         bool   `json:"discovered"`
	TotalConnections   uint64 `json:"total_connections"`
	ActiveConnections  int64  `json:"active_connections"`
	RefusedConnections uint64 `json:"refused_connections"`
	Rx                 uint64 `json:"rx"`
	Tx                 uint64 `json:"tx"`
	RxSecond           uint64 `json:"rx_second"`
	TxSecond           uint64 `json:"tx_second"`
}

func (AdminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errMethod}
	}
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/between/"), "/"), "/")
	switch {
	case len(parts) == 1 && parts[0] == "servers":
		names := []string{}
		running.Range(func(k, _ any) bool { names = append(names, k.(string)); return true })
		sort.Strings(names)
		return writeJSON(w, names)
	case len(parts) == 3 && parts[0] == "servers" && parts[2] == "stats":
		v, ok := running.Load(parts[1])
		if !ok {
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errUnknownServer(parts[1])}
		}
		return writeJSON(w, v.(*Server).state.snapshot())
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errNotFound}
}

// snapshot collects the server's statistics.
func (st *serverState) snapshot() ServerStats {
	s := st.stats.Snapshot()
	out := ServerStats{
		ActiveConnections: s.Active, TotalConnections: s.Total, RefusedConnections: s.Refused,
		RxTotal: s.Rx, TxTotal: s.Tx, RxSecond: s.RxSecond, TxSecond: s.TxSecond,
		Backends: []BackendStats{},
	}
	st.mu.Lock()
	backends := st.sortedLocked()
	st.mu.Unlock()
	sort.Slice(backends, func(i, j int) bool { return backends[i].Address() < backends[j].Address() })
	for _, b := range backends {
		bs := b.Stats.Snapshot()
		out.Backends = append(out.Backends, BackendStats{
			Host: b.Host, Port: b.Port, Priority: b.Priority, Weight: b.Weight,
			MaxConnections: b.MaxConnections, SNI: b.SNI,
			Stats: BackendCounts{
				Live: st.health.Healthy(b.Address()), Discovered: true,
				TotalConnections: bs.Total, ActiveConnections: bs.Active, RefusedConnections: bs.Refused,
				Rx: bs.Rx, Tx: bs.Tx, RxSecond: bs.RxSecond, TxSecond: bs.TxSecond,
			},
		})
	}
	return out
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

type adminError string

func (e adminError) Error() string { return string(e) }

const (
	errMethod   = adminError("method not allowed")
	errNotFound = adminError("not found")
)

func errUnknownServer(name string) error { return adminError("unknown server " + name) }

var _ caddy.AdminRouter = (*AdminAPI)(nil)
