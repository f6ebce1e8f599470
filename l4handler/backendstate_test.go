package l4handler

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func TestStateStore(t *testing.T) {
	s := &stateStore{byHandler: map[string]map[string]BackendState{}}
	if got := s.get("h", "10.0.0.1:80"); got != StateReady {
		t.Errorf("unset state = %q, want ready", got)
	}
	s.set("h", "10.0.0.1:80", StateDrain)
	s.set("h", "10.0.0.2:80", StateMaint)
	s.set("other", "10.0.0.1:80", StateMaint)
	if got := s.get("h", "10.0.0.1:80"); got != StateDrain {
		t.Errorf("state = %q, want drain", got)
	}
	if got := s.of("h"); len(got) != 2 || got["10.0.0.2:80"] != StateMaint {
		t.Errorf("of(h) = %v", got)
	}
	s.set("h", "10.0.0.1:80", StateReady)
	s.set("h", "10.0.0.2:80", StateReady)
	if _, ok := s.byHandler["h"]; ok {
		t.Errorf("ready left entries behind: %v", s.byHandler)
	}
	if got := s.get("other", "10.0.0.1:80"); got != StateMaint {
		t.Errorf("other handler's state = %q, want maint", got)
	}
}

func TestCheckBackendAddress(t *testing.T) {
	for addr, ok := range map[string]bool{
		"10.0.0.1:80": true, "[::1]:443": true, "db.example:5432": true,
		"10.0.0.1": false, ":80": false, "10.0.0.1:0": false, "10.0.0.1:x": false, "10.0.0.1:70000": false, "::1:80": false,
	} {
		if err := checkBackendAddress(addr); (err == nil) != ok {
			t.Errorf("checkBackendAddress(%q) = %v, want ok=%v", addr, err, ok)
		} else if err != nil && !strings.HasPrefix(err.Error(), "backend: ") {
			t.Errorf("error %q does not name the field", err)
		}
	}
}

// TestBackendStateElection: drain and maint backends leave the election
// pool, maint ones also leave health checking, and ready brings them back.
func TestBackendStateElection(t *testing.T) {
	t.Cleanup(func() { backendStates.set("elect", "10.0.0.1:80", StateReady) })
	b1 := &backend.Backend{Host: "10.0.0.1", Port: "80", Stats: new(backend.Stats)}
	b2 := &backend.Backend{Host: "10.0.0.2", Port: "80", Stats: new(backend.Stats)}
	rec := &recordingTracker{}
	st := &state{name: "elect", logger: zap.NewNop(), stats: new(backend.Stats), discovered: map[string]*backend.Backend{}, health: rec, ready: make(chan struct{})}
	for _, b := range []*backend.Backend{b1, b2} {
		b.Freeze()
		st.discovered[b.Address()] = b
	}
	pool := func() []string {
		var out []string
		for _, b := range *st.pool.Load() {
			out = append(out, b.Address())
		}
		return out
	}
	st.applyBackendStates()
	if got := pool(); !slices.Equal(got, []string{"10.0.0.1:80", "10.0.0.2:80"}) {
		t.Fatalf("pool = %v", got)
	}
	for _, tc := range []struct {
		state   BackendState
		pool    []string
		checked []string
	}{
		{StateDrain, []string{"10.0.0.2:80"}, []string{"10.0.0.1:80", "10.0.0.2:80"}},
		{StateMaint, []string{"10.0.0.2:80"}, []string{"10.0.0.2:80"}},
		{StateReady, []string{"10.0.0.1:80", "10.0.0.2:80"}, []string{"10.0.0.1:80", "10.0.0.2:80"}},
	} {
		backendStates.set("elect", "10.0.0.1:80", tc.state)
		st.applyBackendStates()
		if got := pool(); !slices.Equal(got, tc.pool) {
			t.Errorf("%s: pool = %v, want %v", tc.state, got, tc.pool)
		}
		if !slices.Equal(rec.last, tc.checked) {
			t.Errorf("%s: health checks = %v, want %v", tc.state, rec.last, tc.checked)
		}
		if got := st.snapshot().Backends[0].State; got != tc.state {
			t.Errorf("%s: stats state = %q", tc.state, got)
		}
	}
	// Rediscovery keeps the state.
	backendStates.set("elect", "10.0.0.1:80", StateDrain)
	st.setDiscovered([]backend.Backend{{Host: "10.0.0.1", Port: "80"}, {Host: "10.0.0.2", Port: "80"}})
	if got := pool(); !slices.Equal(got, []string{"10.0.0.2:80"}) {
		t.Errorf("after rediscovery: pool = %v", got)
	}
}

// recordingTracker is healthy for everything and records the last Update.
type recordingTracker struct {
	allHealthy
	last []string
}

func (r *recordingTracker) Update(bs []*backend.Backend) {
	r.last = r.last[:0]
	for _, b := range bs {
		r.last = append(r.last, b.Address())
	}
}

// TestAdminEndpoints drives the admin handler of an in-process Caddy.
func TestAdminEndpoints(t *testing.T) {
	t.Cleanup(func() { backendStates.set("adm", "127.0.0.1:40002", StateReady) })
	run(t, config(map[string]string{"a": server("between+tcp/"+freeAddr(t), handlerJSON("adm", ""))}))
	h := runningHandler(t, "adm")
	waitFor(t, 5*time.Second, "discovery", func() bool { return h.state.discoveredCount() == 1 })

	do := func(method, path, body string) (int, string) {
		t.Helper()
		w := httptest.NewRecorder()
		err := AdminAPI{}.serve(w, httptest.NewRequest(method, path, strings.NewReader(body)))
		if err != nil {
			code := http.StatusInternalServerError
			if c, ok := asAPIError(err); ok {
				code = c
			}
			return code, err.Error()
		}
		return w.Code, w.Body.String()
	}
	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"GET", "/between/info", "", 200, `"caddy_l4_version"`},
		{"POST", "/between/info", "", 405, "method"},
		{"GET", "/between/servers/adm", "", 200, `"name":"adm"`},
		{"GET", "/between/servers/nope", "", 404, "unknown between handler nope"},
		{"DELETE", "/between/servers/adm/stats", "", 405, "method"},
		{"GET", "/between/nothing", "", 404, "not found"},
		{"GET", "/between/servers/adm/backends/127.0.0.1:40002/state", "", 200, `"state":"ready","discovered":true`},
		{"PUT", "/between/servers/adm/backends/127.0.0.1:40002/state", `{"state":"drain"}`, 200, `"state":"drain"`},
		{"GET", "/between/servers/adm/backends/127.0.0.1:40002/state", "", 200, `"state":"drain"`},
		{"GET", "/between/servers/adm/stats", "", 200, `"state":"drain"`},
		{"PUT", "/between/servers/adm/backends/127.0.0.1:40002/state", `{"state":"off"}`, 400, "state: "},
		{"PUT", "/between/servers/adm/backends/127.0.0.1:40002/state", `{}`, 400, "state: required"},
		{"PUT", "/between/servers/adm/backends/127.0.0.1:40002/state", `{"state":"ready","x":1}`, 400, "body: "},
		{"PUT", "/between/servers/adm/backends/nohost/state", `{"state":"drain"}`, 400, "backend: "},
		{"PUT", "/between/servers/nope/backends/127.0.0.1:1/state", `{"state":"drain"}`, 404, "unknown between handler"},
		{"POST", "/between/servers/adm/backends/127.0.0.1:40002/state", `{}`, 405, "method"},
		{"GET", "/between/servers/adm/backends/10.9.9.9:1/state", "", 200, `"state":"ready","discovered":false`},
		{"GET", "/between/status", "", 200, `data-backend="127.0.0.1:40002"`},
	} {
		code, body := do(tc.method, tc.path, tc.body)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s %s = %d %s, want %d containing %s", tc.method, tc.path, tc.body, code, body, tc.code, tc.want)
		}
	}
	if got := *h.state.pool.Load(); len(got) != 0 {
		t.Errorf("the drained only backend is still in the pool: %v", got)
	}
	var info Info
	_, body := do("GET", "/between/info", "")
	if err := json.Unmarshal([]byte(body), &info); err != nil || info.Handlers < 1 || info.PID == 0 || info.Version == "" {
		t.Errorf("info = %+v (%v)", info, err)
	}
}

// TestBodyError: a body over an endpoint's limit answers 413 naming the
// limit; other read errors answer 400.
func TestBodyError(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   string
		limit  int64
		status int
		msg    string
	}{
		{"over the limit", strings.Repeat("a", 5000), maxStateBody, http.StatusRequestEntityTooLarge, "body: larger than this endpoint's limit of 4096 bytes"},
		{"at the limit", strings.Repeat("a", 4096), maxStateBody, 0, ""},
		{"over the server limit", strings.Repeat("a", maxServerBody+1), maxServerBody, http.StatusRequestEntityTooLarge, "limit of 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodPut, "/", strings.NewReader(tc.body))
			_, err := io.ReadAll(http.MaxBytesReader(w, r.Body, tc.limit))
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				return
			}
			var apiErr caddy.APIError
			if !errors.As(bodyError(err), &apiErr) || apiErr.HTTPStatus != tc.status || !strings.Contains(apiErr.Err.Error(), tc.msg) {
				t.Errorf("bodyError(%v) = %+v, want %d with %q", err, apiErr, tc.status, tc.msg)
			}
		})
	}
	var apiErr caddy.APIError
	if !errors.As(bodyError(io.ErrUnexpectedEOF), &apiErr) || apiErr.HTTPStatus != http.StatusBadRequest {
		t.Errorf("bodyError(unexpected EOF) = %+v, want 400", apiErr)
	}
}
