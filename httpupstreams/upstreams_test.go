package httpupstreams

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/discovery"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"go.uber.org/zap"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func init() {
	caddy.RegisterModule(fakeSource{})
}

// fakeSource is a discovery module whose answers the test controls through
// the fake of its name (fakes.get(Name)).
type fakeSource struct {
	discovery.Common
	Name string `json:"name,omitempty"`
}

func (fakeSource) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.discovery.httpupstreams_test_fake",
		New: func() caddy.Module { return new(fakeSource) },
	}
}

func (s *fakeSource) Fetch(ctx context.Context) ([]backend.Backend, error) {
	return fakes.get(s.Name).fetch(ctx)
}

// fake is the state behind the fakeSources of one name.
type fake struct {
	mu      sync.Mutex
	lines   []string
	err     error
	gate    chan struct{} // when set, Fetch waits for it to close
	fetches int
}

func (f *fake) fetch(ctx context.Context) ([]backend.Backend, error) {
	f.mu.Lock()
	f.fetches++
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	out := make([]backend.Backend, len(f.lines))
	for i, l := range f.lines {
		b, err := backend.Parse(l)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func (f *fake) set(lines []string, err error) {
	f.mu.Lock()
	f.lines, f.err = lines, err
	f.mu.Unlock()
}

func (f *fake) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fetches
}

type fakeRegistry struct {
	mu sync.Mutex
	m  map[string]*fake
}

var fakes = fakeRegistry{m: map[string]*fake{}}

func (r *fakeRegistry) get(name string) *fake {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.m[name]
	if f == nil {
		f = new(fake)
		r.m[name] = f
	}
	return f
}

// newFake registers a fake under the test's name and returns it with the
// discovery JSON that reaches it (interval 10ms).
func newFake(t *testing.T, lines ...string) (*fake, string) {
	f := fakes.get(t.Name())
	f.set(lines, nil)
	return f, fmt.Sprintf(`{"kind":"httpupstreams_test_fake","name":%q,"interval":"10ms"}`, t.Name())
}

// provision loads an Upstreams module from its JSON as Caddy would; the
// returned function is the module's Cleanup (also run at the end of the test).
func provision(t *testing.T, js string) (*Upstreams, func()) {
	t.Helper()
	u := new(Upstreams)
	dec := json.NewDecoder(strings.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(u); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	if err := u.Provision(ctx); err != nil {
		cancel()
		t.Fatalf("Provision(%s): %v", js, err)
	}
	var once sync.Once
	cleanup := func() {
		once.Do(func() {
			if err := u.Cleanup(); err != nil {
				t.Errorf("Cleanup: %v", err)
			}
			cancel()
		})
	}
	t.Cleanup(cleanup)
	return u, cleanup
}

func request() *http.Request { return httptest.NewRequest("GET", "http://example.test/", nil) }

// dials calls GetUpstreams and renders the result as "dial/max_requests,...".
func dials(t *testing.T, u *Upstreams) (string, error) {
	t.Helper()
	ups, err := u.GetUpstreams(request())
	var parts []string
	for _, up := range ups {
		s := up.Dial
		if up.MaxRequests != 0 {
			s += fmt.Sprintf("/%d", up.MaxRequests)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ","), err
}

// waitDials polls GetUpstreams until it returns want.
func waitDials(t *testing.T, u *Upstreams, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var got string
	var err error
	for time.Now().Before(deadline) {
		if got, err = dials(t, u); err == nil && got == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("GetUpstreams = %q, %v; want %q", got, err, want)
}

func TestGetUpstreamsStatic(t *testing.T) {
	for _, tt := range []struct {
		name  string
		lines []string
		want  string
	}{
		{"in discovery order", []string{"127.0.0.1:3002", "127.0.0.1:3001", "[::1]:3003"}, "127.0.0.1:3002,127.0.0.1:3001,[::1]:3003"},
		{"lowest priority group only", []string{"127.0.0.1:1 priority=2", "127.0.0.1:2 priority=3", "127.0.0.1:3 priority=2"}, "127.0.0.1:1,127.0.0.1:3"},
		{"priority 0 is lowest", []string{"127.0.0.1:1", "127.0.0.1:2 priority=0"}, "127.0.0.1:2"},
		{"max_connections is max_requests", []string{"127.0.0.1:1 max_connections=5", "127.0.0.1:2"}, "127.0.0.1:1/5,127.0.0.1:2"},
		{"weight and sni are not used", []string{"127.0.0.1:1 weight=7 sni=a.test"}, "127.0.0.1:1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			list, _ := json.Marshal(tt.lines)
			u, _ := provision(t, fmt.Sprintf(`{"discovery":{"kind":"static","static_list":%s}}`, list))
			got, err := dials(t, u)
			if err != nil || got != tt.want {
				t.Fatalf("GetUpstreams = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestReduce(t *testing.T) {
	b := func(host, port string, prio, maxc int) backend.Backend {
		return backend.Backend{Host: host, Port: port, Weight: 1, Priority: prio, MaxConnections: maxc}
	}
	for _, tt := range []struct {
		name string
		in   []backend.Backend
		want []target
	}{
		{"empty", nil, nil},
		{"duplicates keep the first", []backend.Backend{b("h", "1", 1, 3), b("g", "2", 1, 0), b("h", "1", 1, 9)},
			[]target{{"h:1", 3}, {"g:2", 0}}},
		{"unusable skipped and not counted for priority", []backend.Backend{b("", "1", 0, 0), b("h", "0", 0, 0), b("h", "x", 0, 0), b("h", "2", 1, 0)},
			[]target{{"h:2", 0}}},
		{"ipv6 bracketed", []backend.Backend{b("::1", "80", 1, 0)}, []target{{"[::1]:80", 0}}},
		{"only unusable", []backend.Backend{b("", "1", 1, 0)}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := reduce(tt.in, zap.NewNop())
			if !got.equal(&upstreamList{targets: tt.want}) {
				t.Fatalf("reduce = %+v, want %+v", got.targets, tt.want)
			}
		})
	}
}

// The list follows the source: changes, a failing fetch keeps the last good
// list, and an empty result gives no upstreams.
func TestFollowsSource(t *testing.T) {
	f, js := newFake(t, "127.0.0.1:1", "127.0.0.1:2")
	u, _ := provision(t, `{"discovery":`+js+`}`)
	waitDials(t, u, "127.0.0.1:1,127.0.0.1:2")

	f.set([]string{"127.0.0.1:2", "127.0.0.1:3 max_connections=4"}, nil)
	waitDials(t, u, "127.0.0.1:2,127.0.0.1:3/4")

	f.set([]string{"127.0.0.1:9"}, errors.New("source down"))
	n := f.count()
	waitFor(t, "more failing fetches", func() bool { return f.count() > n+3 })
	if got, err := dials(t, u); err != nil || got != "127.0.0.1:2,127.0.0.1:3/4" {
		t.Fatalf("after failures GetUpstreams = %q, %v; want the last good list", got, err)
	}

	f.set(nil, nil)
	waitDials(t, u, "")
	if ups, err := u.GetUpstreams(request()); err != nil || len(ups) != 0 {
		t.Fatalf("empty discovery: GetUpstreams = %v, %v", ups, err)
	}
}

func TestFailPolicySetEmpty(t *testing.T) {
	f, _ := newFake(t, "127.0.0.1:1")
	js := fmt.Sprintf(`{"discovery":{"kind":"httpupstreams_test_fake","name":%q,"interval":"10ms","failpolicy":"setempty"}}`, t.Name())
	u, _ := provision(t, js)
	waitDials(t, u, "127.0.0.1:1")
	f.set(nil, errors.New("source down"))
	waitDials(t, u, "")
	f.set([]string{"127.0.0.1:5"}, nil)
	waitDials(t, u, "127.0.0.1:5")
}

// The first request waits for the first fetch instead of failing.
func TestFirstRequestWaits(t *testing.T) {
	f, js := newFake(t, "127.0.0.1:1")
	gate := make(chan struct{})
	f.gate = gate
	u, _ := provision(t, `{"discovery":`+js+`}`)
	got := make(chan string, 1)
	go func() {
		s, err := dials(t, u)
		if err != nil {
			s = err.Error()
		}
		got <- s
	}()
	waitFor(t, "the first fetch", func() bool { return f.count() > 0 })
	select {
	case s := <-got:
		t.Fatalf("GetUpstreams returned %q before the first fetch ended", s)
	case <-time.After(50 * time.Millisecond):
	}
	f.mu.Lock()
	f.gate = nil
	f.mu.Unlock()
	close(gate)
	select {
	case s := <-got:
		if s != "127.0.0.1:1" {
			t.Fatalf("first GetUpstreams = %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("GetUpstreams did not return after the first fetch")
	}
}

// Until a fetch succeeds, GetUpstreams fails with the source's error, and a
// cancelled request does not wait.
func TestNoListYet(t *testing.T) {
	f, js := newFake(t)
	f.set(nil, errors.New("connection refused"))
	u, _ := provision(t, `{"discovery":`+js+`}`)
	_, err := u.GetUpstreams(request())
	if !errors.Is(err, errNoList) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("GetUpstreams error = %v, want errNoList with the fetch error", err)
	}

	gate := make(chan struct{})
	defer close(gate)
	h := fakes.get(t.Name() + "/gated")
	h.set([]string{"127.0.0.1:1"}, nil)
	h.gate = gate
	js = fmt.Sprintf(`{"kind":"httpupstreams_test_fake","name":%q}`, t.Name()+"/gated")
	u2, _ := provision(t, `{"discovery":`+js+`}`)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if _, err := u2.GetUpstreams(request().WithContext(ctx)); !errors.Is(err, errNoList) {
		t.Fatalf("cancelled request: err = %v, want errNoList", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("cancelled request waited %s", d)
	}
}

// Provision and Cleanup alone (caddy validate, caddy adapt --validate) never
// start discovery.
func TestProvisionStartsNothing(t *testing.T) {
	f, js := newFake(t, "127.0.0.1:1")
	u, cleanup := provision(t, `{"discovery":`+js+`}`)
	cleanup()
	if u.feed.started.Load() || u.feed.done != nil {
		t.Fatal("Provision started discovery")
	}
	if n := f.count(); n != 0 {
		t.Fatalf("%d fetches without a request", n)
	}
	// and a request after the last Cleanup does not start it either
	if _, err := u.GetUpstreams(request()); !errors.Is(err, errNoList) {
		t.Fatalf("GetUpstreams after Cleanup: %v, want errNoList", err)
	}
	if u.feed.started.Load() || f.count() != 0 {
		t.Fatal("a request after Cleanup started discovery")
	}
}

// Two configs with the same discovery share one running discovery, as on a
// reload: the old config's Cleanup does not stop it, the last one does.
func TestSharedAcrossReload(t *testing.T) {
	f, js := newFake(t, "127.0.0.1:1")
	old, cleanupOld := provision(t, `{"discovery":`+js+`}`)
	waitDials(t, old, "127.0.0.1:1")

	// the same config written another way: same discovery
	spaced := strings.ReplaceAll(js, ",", " , ")
	cur, cleanupCur := provision(t, `{"discovery": `+spaced+` }`)
	if cur.feed != old.feed {
		t.Fatal("an unchanged discovery config got a new discovery")
	}
	cleanupOld()
	f.set([]string{"127.0.0.1:2"}, nil)
	waitDials(t, cur, "127.0.0.1:2")
	if got, _ := dials(t, old); got != "127.0.0.1:2" {
		t.Errorf("a request still running in the old config gets %q, want the current list", got)
	}

	// a changed config gets its own discovery
	other := fmt.Sprintf(`{"discovery":{"kind":"httpupstreams_test_fake","name":%q,"interval":"20ms"}}`, t.Name())
	changed, _ := provision(t, other)
	if changed.feed == cur.feed {
		t.Fatal("a changed discovery config shares the old discovery")
	}
	cleanupCur()

	select {
	case <-cur.feed.done:
	case <-time.After(5 * time.Second):
		t.Fatal("discovery still runs after the last config using it was cleaned up")
	}
	// the stopped discovery keeps serving its last list to late requests
	if got, err := dials(t, cur); err != nil || got != "127.0.0.1:2" {
		t.Fatalf("after stop GetUpstreams = %q, %v", got, err)
	}
}

// Every call returns Upstreams of its own (reverse_proxy writes into them),
// in two allocations whatever the number of backends.
func TestGetUpstreamsFreshValues(t *testing.T) {
	lines := make([]string, 50)
	for i := range lines {
		lines[i] = fmt.Sprintf("127.0.0.1:%d", 1000+i)
	}
	list, _ := json.Marshal(lines)
	u, _ := provision(t, fmt.Sprintf(`{"discovery":{"kind":"static","static_list":%s}}`, list))
	a, err := u.GetUpstreams(request())
	if err != nil || len(a) != 50 {
		t.Fatalf("GetUpstreams = %d upstreams, %v", len(a), err)
	}
	b, _ := u.GetUpstreams(request())
	for i := range a {
		if a[i] == b[i] {
			t.Fatalf("upstream %d is shared between two calls", i)
		}
	}
	r := request()
	if n := testing.AllocsPerRun(100, func() { u.GetUpstreams(r) }); n != 2 {
		t.Errorf("%v allocations per GetUpstreams, want 2", n)
	}
}

func TestProvisionErrors(t *testing.T) {
	for _, tt := range []struct{ name, js, mention string }{
		{"no discovery", `{}`, "discovery: required"},
		{"unknown kind", `{"discovery":{"kind":"nope"}}`, "discovery"},
		{"source's own error", `{"discovery":{"kind":"static","static_list":["127.0.0.1:0"]}}`, "static_list[0]"},
		{"source's validation", `{"discovery":{"kind":"static"}}`, "static_list"},
		{"common field", `{"discovery":{"kind":"static","static_list":["127.0.0.1:1"],"failpolicy":"drop"}}`, "failpolicy"},
		{"unknown field", `{"discovery":{"kind":"static","static_list":["127.0.0.1:1"],"colour":"red"}}`, "colour"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := new(Upstreams)
			if err := json.Unmarshal([]byte(tt.js), u); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := u.Provision(ctx)
			if err == nil {
				u.Cleanup()
				t.Fatalf("Provision(%s) succeeded", tt.js)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tt := range []struct {
		name, input, want, wantErr string
	}{
		{"static inline", `between static 127.0.0.1:1 127.0.0.1:2`,
			`{"discovery":{"kind":"static","static_list":["127.0.0.1:1","127.0.0.1:2"]}}`, ""},
		{"block with common fields", "between static 127.0.0.1:1 {\n list \"127.0.0.1:2 priority=2\"\n interval 2s\n failpolicy setempty\n}",
			`{"discovery":{"failpolicy":"setempty","interval":2000000000,"kind":"static","static_list":["127.0.0.1:1","127.0.0.1:2 priority=2"]}}`, ""},
		{"no kind", `between`, "", "missing discovery kind"},
		{"block without kind", "between {\n}", "", "missing discovery kind"},
		{"unknown kind", `between nope`, "", "between.discovery.nope"},
		{"source's own error", "between static 127.0.0.1:1 {\n colour red\n}", "", "colour"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var u Upstreams
			err := u.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(u)
			if string(got) != tt.want {
				t.Fatalf("got %s\nwant %s", got, tt.want)
			}
		})
	}
}

// Whole Caddyfiles adapt to the JSON in testdata/NAME.json (go test -update
// rewrites them).
func TestCaddyfileAdapt(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.caddyfile")
	if len(files) == 0 {
		t.Fatal("no testdata/*.caddyfile")
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			in, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			out, warnings, err := adapter.Adapt(in, map[string]any{"filename": path})
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) > 0 {
				t.Errorf("warnings: %v", warnings)
			}
			var pretty strings.Builder
			var v any
			if err := json.Unmarshal(out, &v); err != nil {
				t.Fatal(err)
			}
			enc := json.NewEncoder(&pretty)
			enc.SetIndent("", "\t")
			enc.Encode(v)
			golden := strings.TrimSuffix(path, ".caddyfile") + ".json"
			if *update {
				if err := os.WriteFile(golden, []byte(pretty.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if pretty.String() != string(want) {
				t.Fatalf("adapted to\n%s\nwant (%s)\n%s", pretty.String(), golden, want)
			}
		})
	}
}

func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, s := range []string{
		"between static 127.0.0.1:1",
		"between static {\n list \"127.0.0.1:2 weight=2\"\n interval 1s\n}",
		"between",
		"between {\n}",
		"between static 127.0.0.1:1 {\n timeout\n}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		var u Upstreams
		if u.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)) == nil && u.DiscoveryRaw != nil && !json.Valid(u.DiscoveryRaw) {
			t.Fatalf("%q gave invalid JSON %s", input, u.DiscoveryRaw)
		}
	})
}

func BenchmarkGetUpstreams(b *testing.B) {
	for _, n := range []int{3, 100} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			lines := make([]string, n)
			for i := range lines {
				lines[i] = fmt.Sprintf("127.0.0.1:%d", 1000+i)
			}
			list, _ := json.Marshal(lines)
			u := new(Upstreams)
			json.Unmarshal(fmt.Appendf(nil, `{"discovery":{"kind":"static","static_list":%s}}`, list), u)
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			if err := u.Provision(ctx); err != nil {
				b.Fatal(err)
			}
			defer u.Cleanup()
			r := request()
			u.GetUpstreams(r)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				u.GetUpstreams(r)
			}
		})
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
