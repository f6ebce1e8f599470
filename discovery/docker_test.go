package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/internal/testpeers"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestDockerEndpoint(t *testing.T) {
	for _, tt := range []struct {
		endpoint string
		tls      bool
		want     dockerEndpoint
		mention  string
	}{
		{"unix:///var/run/docker.sock", false, dockerEndpoint{socket: "/var/run/docker.sock", baseURL: "http://docker"}, ""},
		{"tcp://10.0.0.5:2375", false, dockerEndpoint{host: "10.0.0.5", baseURL: "http://10.0.0.5:2375"}, ""},
		{"tcp://docker.internal", false, dockerEndpoint{host: "docker.internal", baseURL: "http://docker.internal:2375"}, ""},
		{"tcp://docker.internal", true, dockerEndpoint{host: "docker.internal", tls: true, baseURL: "https://docker.internal:2376"}, ""},
		{"http://[::1]:2375/", false, dockerEndpoint{host: "::1", baseURL: "http://[::1]:2375"}, ""},
		{"https://127.0.0.1:9999", false, dockerEndpoint{host: "127.0.0.1", tls: true, baseURL: "https://127.0.0.1:9999"}, ""},
		{"unix://relative/docker.sock", false, dockerEndpoint{}, "unix:///absolute/path"},
		{"unix:///var/run/docker.sock", true, dockerEndpoint{}, "docker_tls_enabled"},
		{"npipe:////./pipe/docker_engine", false, dockerEndpoint{}, `unknown scheme "npipe"`},
		{"127.0.0.1:2375", false, dockerEndpoint{}, "want unix:///path"},
		{"tcp://:2375", false, dockerEndpoint{}, "no host"},
		{"tcp://127.0.0.1:0", false, dockerEndpoint{}, "port"},
		{"tcp://127.0.0.1:2375/v1.41", false, dockerEndpoint{}, "only scheme://host:port"},
		{"tcp://user:pw@127.0.0.1:2375", false, dockerEndpoint{}, "only scheme://host:port"},
	} {
		t.Run(tt.endpoint, func(t *testing.T) {
			got, err := parseDockerEndpoint(tt.endpoint, tt.tls)
			if tt.mention != "" {
				wantErrMentioning(t, err, tt.mention)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestDockerValidate(t *testing.T) {
	ok := Docker{DockerContainerPrivatePort: 80}
	for _, tt := range []struct {
		name    string
		mod     func(*Docker)
		mention string
	}{
		{"defaults", func(*Docker) {}, ""},
		{"network and host env var", func(d *Docker) { d.DockerNetwork = "host"; d.DockerContainerHostEnvVar = "HOST" }, ""},
		{"no private port", func(d *Docker) { d.DockerContainerPrivatePort = 0 }, "docker_container_private_port"},
		{"private port too big", func(d *Docker) { d.DockerContainerPrivatePort = 65536 }, "docker_container_private_port 65536"},
		{"bad endpoint", func(d *Docker) { d.DockerEndpoint = "ftp://x" }, "docker_endpoint"},
		{"tls on a unix socket", func(d *Docker) { d.DockerTLSEnabled = true }, "docker_endpoint"},
		{"cert without key", func(d *Docker) { d.DockerEndpoint = "https://h"; d.DockerTLSCertPath = "/c.pem" }, "docker_tls_key_path"},
		{"tls files without tls", func(d *Docker) { d.DockerEndpoint = "tcp://h"; d.DockerTLSCACertPath = "/ca.pem" }, "docker_tls_enabled"},
		{"tls files with https", func(d *Docker) { d.DockerEndpoint = "https://h"; d.DockerTLSCACertPath = "/ca.pem" }, ""},
		{"tls files with tls_enabled", func(d *Docker) {
			d.DockerEndpoint, d.DockerTLSEnabled = "tcp://h", true
			d.DockerTLSCertPath, d.DockerTLSKeyPath = "/c.pem", "/k.pem"
		}, ""},
		{"bad label", func(d *Docker) { d.DockerContainerLabel = "=x" }, "docker_container_label"},
		{"env var with a bridge network", func(d *Docker) { d.DockerNetwork = "backend"; d.DockerContainerHostEnvVar = "HOST" }, "docker_container_host_env_var"},
		{"bad failpolicy", func(d *Docker) { d.FailPolicy = "retry" }, "failpolicy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := ok
			tt.mod(&d)
			wantErrNaming(t, "Validate()", d.Validate(), tt.mention)
		})
	}
}

func TestDockerProvisionErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		d       Docker
		mention string
	}{
		{"default endpoint", Docker{DockerContainerPrivatePort: 80}, ""},
		{"bad endpoint", Docker{DockerEndpoint: "tcp://"}, "docker_endpoint"},
		{"missing client cert", Docker{DockerEndpoint: "https://127.0.0.1:1", DockerTLSCertPath: filepath.Join(dir, "no.pem"), DockerTLSKeyPath: filepath.Join(dir, "no.key")}, "docker_tls_cert_path"},
		{"missing ca", Docker{DockerEndpoint: "https://127.0.0.1:1", DockerTLSCACertPath: filepath.Join(dir, "no.pem")}, "docker_tls_cacert_path"},
		{"ca without certificate", Docker{DockerEndpoint: "https://127.0.0.1:1", DockerTLSCACertPath: garbage}, "no PEM certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.d.Provision(caddy.Context{})
			if tt.mention == "" {
				if err != nil || tt.d.DockerEndpoint != DefaultDockerEndpoint {
					t.Fatalf("Provision = %v, endpoint %q", err, tt.d.DockerEndpoint)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("Provision() = %v, want an error naming %s", err, tt.mention)
			}
		})
	}
}

func TestDockerJSON(t *testing.T) {
	in := `{"docker_endpoint":"tcp://10.0.0.5:2376","docker_container_private_port":8080,
		"docker_container_label":"proxied=true","docker_container_host_env_var":"HOST_IP",
		"docker_network":"host","docker_tls_enabled":true,"docker_tls_cert_path":"/c.pem",
		"docker_tls_key_path":"/k.pem","docker_tls_cacert_path":"/ca.pem","interval":"10s","failpolicy":"setempty"}`
	var d Docker
	dec := json.NewDecoder(strings.NewReader(in))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	want := Docker{DockerEndpoint: "tcp://10.0.0.5:2376", DockerContainerPrivatePort: 8080,
		DockerContainerLabel: "proxied=true", DockerContainerHostEnvVar: "HOST_IP", DockerNetwork: "host",
		DockerTLSEnabled: true, DockerTLSCertPath: "/c.pem", DockerTLSKeyPath: "/k.pem", DockerTLSCACertPath: "/ca.pem",
		Common: Common{Interval: caddy.Duration(10 * time.Second), FailPolicy: "setempty"}}
	if !sameDockerConfig(d, want) {
		t.Fatalf("unmarshalled %+v", d)
	}
	out, err := json.Marshal(Docker{DockerContainerPrivatePort: 80})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"docker_container_private_port":80}` {
		t.Fatalf("defaults marshal to %s", out)
	}
}

func sameDockerConfig(a, b Docker) bool {
	return a.Common == b.Common && a.DockerEndpoint == b.DockerEndpoint &&
		a.DockerContainerPrivatePort == b.DockerContainerPrivatePort &&
		a.DockerContainerLabel == b.DockerContainerLabel &&
		a.DockerContainerHostEnvVar == b.DockerContainerHostEnvVar &&
		a.DockerNetwork == b.DockerNetwork && a.DockerTLSEnabled == b.DockerTLSEnabled &&
		a.DockerTLSCertPath == b.DockerTLSCertPath && a.DockerTLSKeyPath == b.DockerTLSKeyPath &&
		a.DockerTLSCACertPath == b.DockerTLSCACertPath
}

func TestDockerCaddyfile(t *testing.T) {
	runCaddyfileCases(t, []caddyfileCase[Docker]{
		{"short names", `docker {
				endpoint tcp://10.0.0.5:2376
				container_private_port 8080
				container_label proxied=true
				container_host_env_var HOST_IP
				network host
				tls_enabled
				tls_cert_path /c.pem
				tls_key_path /k.pem
				tls_cacert_path /ca.pem
				interval 10s
				timeout 2s
				failpolicy setempty
			}`,
			Docker{DockerEndpoint: "tcp://10.0.0.5:2376", DockerContainerPrivatePort: 8080,
				DockerContainerLabel: "proxied=true", DockerContainerHostEnvVar: "HOST_IP", DockerNetwork: "host",
				DockerTLSEnabled: true, DockerTLSCertPath: "/c.pem", DockerTLSKeyPath: "/k.pem", DockerTLSCACertPath: "/ca.pem",
				Common: Common{Interval: caddy.Duration(10 * time.Second), Timeout: caddy.Duration(2 * time.Second), FailPolicy: "setempty"}}, ""},
		{"gobetween names", `docker {
				docker_container_private_port 80
				docker_network backend
				docker_tls_enabled false
			}`,
			Docker{DockerContainerPrivatePort: 80, DockerNetwork: "backend"}, ""},
		{"no private port", "docker {\n network backend\n}", Docker{}, "container_private_port is required"},
		{"bad private port", "docker {\n container_private_port http\n}", Docker{}, `container_private_port "http"`},
		{"port out of range", "docker {\n container_private_port 70000\n}", Docker{}, "container_private_port"},
		{"inline argument", "docker unix:///var/run/docker.sock {\n container_private_port 80\n}", Docker{}, "argument"},
		{"missing value", "docker {\n container_private_port 80\n endpoint\n}", Docker{}, "argument"},
		{"two values", "docker {\n container_private_port 80\n network a b\n}", Docker{}, "argument"},
		{"bad tls_enabled", "docker {\n container_private_port 80\n tls_enabled yes\n}", Docker{}, "tls_enabled"},
		{"tls_enabled two values", "docker {\n container_private_port 80\n tls_enabled true false\n}", Docker{}, "argument"},
		{"unknown", "docker {\n container_private_port 80\n container_name web\n}", Docker{}, "container_name"},
	}, func(got, want *Docker) bool {
		return sameDockerConfig(*got, *want)
	})
}

// fakeEngine serves the Engine API's list, inspect and events endpoints from
// testdata/docker: containers.json and inspect/<id>.json (a missing file is a
// 404, as for a container that went away).
type fakeEngine struct {
	t      *testing.T
	srv    *httptest.Server
	events chan string // lines sent on the open event streams

	mu       sync.Mutex
	requests []string // paths with queries, in arrival order
	status   int      // answer every request with this status when set
}

// newFakeEngine serves over TCP, or over a unix socket when unix is true.
func newFakeEngine(t *testing.T, unix bool) *fakeEngine {
	t.Helper()
	f := &fakeEngine{t: t, events: make(chan string, 16)}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	if unix {
		ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "docker.sock"))
		if err != nil {
			t.Fatal(err)
		}
		f.srv.Listener = ln
	}
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	return f
}

// endpoint is the docker_endpoint of the fake.
func (f *fakeEngine) endpoint(host string) string {
	addr := f.srv.Listener.Addr()
	if addr.Network() == "unix" {
		return "unix://" + addr.String()
	}
	_, port, _ := net.SplitHostPort(addr.String())
	return "tcp://" + net.JoinHostPort(host, port)
}

func (f *fakeEngine) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

func (f *fakeEngine) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.URL.RequestURI())
	status := f.status
	f.mu.Unlock()
	if status != 0 {
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"message":"fake engine says %d"}`, status)
		return
	}
	switch {
	case r.URL.Path == "/containers/json":
		var all []map[string]any
		raw, err := os.ReadFile("testdata/docker/containers.json")
		if err == nil {
			err = json.Unmarshal(raw, &all)
		}
		if err != nil {
			f.t.Error(err)
			w.WriteHeader(500)
			return
		}
		var filters map[string][]string
		if q := r.URL.Query().Get("filters"); q != "" {
			if err := json.Unmarshal([]byte(q), &filters); err != nil {
				w.WriteHeader(400)
				fmt.Fprintf(w, `{"message":"bad filters: %v"}`, err)
				return
			}
		}
		out := []map[string]any{}
		for _, c := range all {
			labels, _ := c["Labels"].(map[string]any)
			if dockerMatchLabels(labels, filters["label"]) {
				out = append(out, c)
			}
		}
		json.NewEncoder(w).Encode(out)
	case strings.HasPrefix(r.URL.Path, "/containers/") && strings.HasSuffix(r.URL.Path, "/json"):
		id := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/containers/"), "/json")
		raw, err := os.ReadFile(filepath.Join("testdata/docker/inspect", filepath.Base(id)+".json"))
		if err != nil {
			w.WriteHeader(404)
			fmt.Fprintf(w, `{"message":"No such container: %s"}`, id)
			return
		}
		w.Write(raw)
	case r.URL.Path == "/events":
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		for {
			select {
			case <-r.Context().Done():
				return
			case line, ok := <-f.events:
				if !ok {
					return // the daemon went away
				}
				fmt.Fprintln(w, line)
				w.(http.Flusher).Flush()
			}
		}
	default:
		w.WriteHeader(404)
		fmt.Fprintf(w, `{"message":"page not found"}`)
	}
}

// dockerMatchLabels applies the Engine's label filter: every "key" or "key=value".
func dockerMatchLabels(labels map[string]any, want []string) bool {
	for _, w := range want {
		k, v, hasValue := strings.Cut(w, "=")
		got, ok := labels[k]
		if !ok || hasValue && got != v {
			return false
		}
	}
	return true
}

// observed returns a logger that records Warn and above, and the records.
func dockerObserved() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.WarnLevel)
	return zap.New(core), logs
}

// skipped lists "container: reason" of every container-skipped log line.
func dockerSkipped(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.FilterMessage("docker: container skipped").All() {
		m := e.ContextMap()
		out = append(out, fmt.Sprintf("%s: %s", m["container"], m["reason"]))
	}
	return out
}

func dockerAddresses(l []backend.Backend) string {
	s := make([]string, len(l))
	for i, b := range l {
		s[i] = b.Address()
		if b.Weight != 1 || b.Priority != 1 {
			s[i] += " (weight or priority not 1)"
		}
	}
	return strings.Join(s, " ")
}

// The address rules, against Engine answers that cover what a single test
// daemon cannot produce (specific mapping IPs, IPv6-only mappings, containers
// that vanish between list and inspect, paused containers).
func TestDockerAddresses(t *testing.T) {
	tnetID := "807d14a571e47182488d2a0ae12e3e9b0ab12d548795ecf52af390efb96bd281"
	for _, tt := range []struct {
		name     string
		tcpHost  string // serve over TCP with this endpoint host; "" = unix socket
		mod      func(*Docker)
		want     string
		skips    []string // "container: reason part"
		inspects int      // inspect requests expected
	}{
		{"published ports, unix endpoint", "", func(*Docker) {},
			"127.0.0.1:7000 127.0.0.1:31002 127.0.0.1:31003 [::1]:31004 127.0.0.1:31007",
			[]string{"exposed: does not publish private port 7000", "other-port: does not publish", "paused: container is paused",
				"v6net: does not publish", "web-host-2: address 127.0.0.1:7000 is already used by container web-host"}, 0},
		{"published ports, tcp endpoint", "localhost", func(*Docker) {},
			"localhost:7000 127.0.0.1:31002 localhost:31003 localhost:31004 localhost:31007",
			[]string{"exposed", "other-port", "paused", "v6net", "web-host-2: address localhost:7000"}, 0},
		{"host from env var", "", func(d *Docker) { d.DockerContainerHostEnvVar = "HOST_IP" },
			"127.0.0.1:7000 [2001:db8::7]:31003 [::1]:31004 192.0.2.10:31007",
			[]string{`pub-local: environment variable HOST_IP="bad host/x" is not a host`, "exposed", "other-port", "paused", "v6net",
				"web-host-2: container went away"}, 6},
		{"docker_network by name", "", func(d *Docker) { d.DockerNetwork = "tnet" },
			"10.213.7.2:7000 10.213.7.3:7000 10.213.7.4:7000 [fd00:db8::5]:7000",
			[]string{`web-host: not attached to network "tnet"`, "pub-v6: not attached", "other-port: not attached",
				"paused: container is paused", "envhost: not attached", "web-host-2: not attached"}, 0},
		{"docker_network by short ID", "", func(d *Docker) { d.DockerNetwork = tnetID[:12] },
			"10.213.7.2:7000 10.213.7.3:7000 10.213.7.4:7000 [fd00:db8::5]:7000",
			[]string{"web-host", "pub-v6", "other-port", "paused", "envhost", "web-host-2"}, 0},
		{"docker_network by full ID", "", func(d *Docker) { d.DockerNetwork = tnetID },
			"10.213.7.2:7000 10.213.7.3:7000 10.213.7.4:7000 [fd00:db8::5]:7000",
			[]string{"web-host", "pub-v6", "other-port", "paused", "envhost", "web-host-2"}, 0},
		{"docker_network host", "", func(d *Docker) { d.DockerNetwork = "host" },
			"127.0.0.1:7000",
			[]string{`pub-local: not in the host network (docker_network "host")`, "pub-all", "pub-v6", "exposed", "other-port",
				"paused", "v6net", "envhost", "web-host-2: address 127.0.0.1:7000 is already used"}, 0},
		{"docker_network host, tcp endpoint", "localhost", func(d *Docker) { d.DockerNetwork = "host" },
			"localhost:7000",
			[]string{"pub-local", "pub-all", "pub-v6", "exposed", "other-port", "paused", "v6net", "envhost", "web-host-2"}, 0},
		{"label with value", "", func(d *Docker) { d.DockerContainerLabel = "role=web" },
			"127.0.0.1:7000", []string{"web-host-2: address"}, 0},
		{"label key only", "", func(d *Docker) { d.DockerContainerLabel = "role" },
			"127.0.0.1:7000 127.0.0.1:31002 127.0.0.1:31003 [::1]:31004 127.0.0.1:31007", []string{"web-host-2"}, 0},
		{"label nobody has", "", func(d *Docker) { d.DockerContainerLabel = "role=db" }, "", nil, 0},
		{"another private port", "", func(d *Docker) { d.DockerContainerPrivatePort = 9000 },
			"127.0.0.1:9000 127.0.0.1:31005",
			[]string{"pub-local: does not publish private port 9000", "pub-all", "pub-v6", "exposed", "paused", "v6net", "envhost", "web-host-2"}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, tt.tcpHost == "")
			d := &Docker{DockerEndpoint: f.endpoint(tt.tcpHost), DockerContainerPrivatePort: 7000}
			tt.mod(d)
			if err := d.Provision(caddy.Context{}); err != nil {
				t.Fatal(err)
			}
			if err := d.Validate(); err != nil {
				t.Fatal(err)
			}
			var logs *observer.ObservedLogs
			d.logger, logs = dockerObserved()
			got, err := d.Fetch(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if a := dockerAddresses(got); a != tt.want {
				t.Errorf("addresses\n got %s\nwant %s", a, tt.want)
			}
			skips := dockerSkipped(logs)
			if len(skips) != len(tt.skips) {
				t.Errorf("skipped %d containers, want %d:\n%s", len(skips), len(tt.skips), strings.Join(skips, "\n"))
			}
			for i := range min(len(skips), len(tt.skips)) {
				if !strings.HasPrefix(skips[i], strings.SplitN(tt.skips[i], ":", 2)[0]+":") || !strings.Contains(skips[i], tt.skips[i]) {
					t.Errorf("skip %d = %q, want it to contain %q", i, skips[i], tt.skips[i])
				}
			}
			inspects := 0
			for _, p := range f.seen() {
				if strings.HasPrefix(p, "/containers/") && p != "/containers/json" && !strings.HasPrefix(p, "/containers/json?") {
					inspects++
				}
			}
			if inspects != tt.inspects {
				t.Errorf("%d inspect requests, want %d: %q", inspects, tt.inspects, f.seen())
			}
			if d.DockerContainerLabel != "" {
				want := "/containers/json?filters=" + dockerFilterQuery(map[string][]string{"label": {d.DockerContainerLabel}})
				if first := f.seen()[0]; first != want {
					t.Errorf("list request %q, want %q", first, want)
				}
			}
		})
	}
}

// A container left out is logged once, not after every event's list; a new
// reason is logged again.
func TestDockerSkipLoggedOnce(t *testing.T) {
	f := newFakeEngine(t, true)
	d := &Docker{DockerEndpoint: f.endpoint(""), DockerContainerPrivatePort: 7000}
	if err := d.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	var logs *observer.ObservedLogs
	d.logger, logs = dockerObserved()
	for range 3 {
		if _, err := d.Fetch(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(dockerSkipped(logs)); n != 5 {
		t.Fatalf("3 fetches logged %d skips, want the 5 containers once:\n%s", n, strings.Join(dockerSkipped(logs), "\n"))
	}
	d.DockerContainerPrivatePort = 9000 // every reason but "paused" changes
	if _, err := d.Fetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(dockerSkipped(logs)); n != 5+7 {
		t.Fatalf("after the port changed: %d skips logged, want 12:\n%s", n, strings.Join(dockerSkipped(logs), "\n"))
	}
}

func TestDockerFetchErrors(t *testing.T) {
	for _, tt := range []struct {
		name    string
		setup   func(*fakeEngine) string // returns the endpoint
		mention []string
	}{
		{"daemon error", func(f *fakeEngine) string {
			f.status = 500
			return f.endpoint("")
		}, []string{"docker: listing containers", "500", "fake engine says 500"}},
		{"not an engine", func(f *fakeEngine) string {
			f.status = 404
			return f.endpoint("")
		}, []string{"docker: listing containers", "404"}},
		{"no daemon", func(f *fakeEngine) string {
			return "unix://" + filepath.Join(f.t.TempDir(), "none.sock")
		}, []string{"docker: listing containers", "none.sock"}},
		{"refused", func(f *fakeEngine) string {
			return "tcp://127.0.0.1:" + strconv.Itoa(testpeers.FreePort(f.t))
		}, []string{"docker: listing containers", "refused"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEngine(t, true)
			d := &Docker{DockerEndpoint: tt.setup(f), DockerContainerPrivatePort: 7000}
			if err := d.Provision(caddy.Context{}); err != nil {
				t.Fatal(err)
			}
			_, err := d.Fetch(context.Background())
			if err == nil {
				t.Fatal("Fetch succeeded")
			}
			wantErrParts(t, err, tt.mention...)
		})
	}
	t.Run("honours ctx", func(t *testing.T) {
		// a daemon that accepts and never answers
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		d := &Docker{DockerEndpoint: "tcp://" + ln.Addr().String(), DockerContainerPrivatePort: 7000}
		if err := d.Provision(caddy.Context{}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := d.Fetch(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Fetch = %v, want a deadline error", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("Fetch took %s past a 200ms deadline", took)
		}
	})
}

// Watch against the fake: lists after relevant events only, a clear error
// when the stream ends.
func TestDockerWatchFake(t *testing.T) {
	f := newFakeEngine(t, true)
	d := &Docker{DockerEndpoint: f.endpoint(""), DockerContainerPrivatePort: 7000, DockerNetwork: "tnet"}
	if err := d.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	d.logger = zap.NewNop()
	updates := make(chan []backend.Backend, 10)
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- d.Watch(ctx, func(l []backend.Backend) { updates <- l }) }()
	recv(t, updates, 2*time.Second, "list after the stream opened")
	events := f.seen()
	if len(events) == 0 || !strings.HasPrefix(events[0], "/events?filters=") {
		t.Fatalf("requests %q, want /events first", events)
	}
	var filters map[string][]string
	q := strings.TrimPrefix(events[0], "/events?filters=")
	if uq, err := dockerUnescape(q); err != nil || json.Unmarshal([]byte(uq), &filters) != nil {
		t.Fatalf("events filter %q: %v", q, err)
	}
	if !slices.Equal(filters["type"], []string{"container", "network"}) || !slices.Contains(filters["event"], "die") ||
		!slices.Contains(filters["event"], "disconnect") {
		t.Fatalf("events filters = %v", filters)
	}

	for _, tt := range []struct {
		event  string
		update bool
	}{
		{`{"Type":"container","Action":"start","id":"x"}`, true},
		{`{"Type":"container","Action":"exec_start: sh","id":"x"}`, false},
		{`{"Type":"image","Action":"pull"}`, false},
		{`{"Type":"container","Action":"die"}`, true},
	} {
		f.events <- tt.event
		if tt.update {
			recv(t, updates, 2*time.Second, "list after "+tt.event)
		} else {
			nothing(t, updates, 200*time.Millisecond, "list after "+tt.event)
		}
	}
	// a network event: a list at once, then the settling ones
	sent := time.Now()
	f.events <- `{"Type":"network","Action":"disconnect"}`
	for i := range 1 + len(dockerSettleDelays) {
		recv(t, updates, 2*time.Second, fmt.Sprintf("list %d after a network event", i+1))
	}
	if took := time.Since(sent); took < 900*time.Millisecond {
		t.Errorf("the settling lists came within %v, want the last about 1s after the event", took)
	}
	nothing(t, updates, 300*time.Millisecond, "list after the settling ones")
	close(f.events) // the stream ends, as when dockerd stops
	err := recv(t, done, 2*time.Second, "Watch return")
	if err == nil || !strings.Contains(err.Error(), "event stream") || !strings.Contains(err.Error(), "ended") {
		t.Fatalf("Watch = %v, want an error saying the event stream ended", err)
	}
}

func dockerUnescape(s string) (string, error) {
	req, err := http.NewRequest("GET", "/?q="+s, nil)
	if err != nil {
		return "", err
	}
	return req.URL.Query().Get("q"), nil
}

func TestDockerWatchEndsWithCtx(t *testing.T) {
	f := newFakeEngine(t, false)
	d := &Docker{DockerEndpoint: f.endpoint("127.0.0.1"), DockerContainerPrivatePort: 7000}
	if err := d.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	d.logger = zap.NewNop()
	ctx, cancel := context.WithCancel(context.Background())
	updates := make(chan []backend.Backend, 10)
	done := make(chan error, 1)
	go func() { done <- d.Watch(ctx, func(l []backend.Backend) { updates <- l }) }()
	recv(t, updates, 2*time.Second, "first list")
	cancel()
	recv(t, done, 2*time.Second, "Watch return after cancel")
}

// ---- the real daemon ----

// dockerSource is a provisioned docker source on the daemon's unix socket.
func dockerSource(t *testing.T, d *testpeers.Dockerd, mod func(*Docker)) (*Docker, *observer.ObservedLogs) {
	t.Helper()
	s := &Docker{DockerEndpoint: "unix://" + d.Sock}
	mod(s)
	if err := s.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	var logs *observer.ObservedLogs
	s.logger, logs = dockerObserved()
	t.Cleanup(func() { s.Cleanup() })
	return s, logs
}

func dockerFetchList(t *testing.T, s *Docker) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := s.Fetch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return dockerSorted(dockerAddresses(l))
}

// dockerSorted sorts a space-separated list of addresses: containers started
// in the same second are listed in ID order, which a test cannot foresee.
func dockerSorted(addrs string) string {
	f := strings.Fields(addrs)
	slices.Sort(f)
	return strings.Join(f, " ")
}

// dockerUpdate is one list from a Runner and when the Runner sent it.
type dockerUpdate struct {
	at   time.Time
	list []backend.Backend
}

// dockerRun runs s under a Runner until the test ends.
func dockerRun(t *testing.T, s *Docker) (<-chan dockerUpdate, <-chan error) {
	updates, errs := make(chan dockerUpdate, 100), make(chan error, 100)
	r := &Runner{
		Source:  s,
		Update:  func(l []backend.Backend) { updates <- dockerUpdate{time.Now(), l} },
		OnError: func(err error) { errs <- err },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return updates, errs
}

// dockerWaitList reads updates until one has the wanted addresses (in any
// order), and returns when the Runner sent it.
func dockerWaitList(t *testing.T, updates <-chan dockerUpdate, want string, within time.Duration) time.Time {
	t.Helper()
	deadline := time.After(within)
	last := "(none)"
	for {
		select {
		case u := <-updates:
			if last = dockerAddresses(u.list); dockerSorted(last) == dockerSorted(want) {
				return u.at
			}
		case <-deadline:
			t.Fatalf("no list %q within %s; last %q", want, within, last)
		}
	}
}

// dockerCheckDelay logs when a change made with the docker CLI (began,
// returned) reached the list (at), and fails when that was more than a
// second after the command returned: Docker's own work is done by then.
func dockerCheckDelay(t *testing.T, what string, began, returned, at time.Time) {
	t.Helper()
	after := max(at.Sub(returned), 0)
	t.Logf("docker %s: list changed %v after the command began (it took %v), %v after it returned",
		what, at.Sub(began).Round(time.Millisecond), returned.Sub(began).Round(time.Millisecond), after.Round(time.Millisecond))
	if after > time.Second {
		t.Errorf("docker %s: the list changed %v after the command returned, want < 1s", what, after)
	}
}

// The source against a real dockerd: event-driven updates, published ports,
// docker_network, the label filter, TLS, and a daemon that stops.
func TestDockerDaemon(t *testing.T) {
	d := testpeers.StartDockerd(t, true)

	t.Run("host network follows events", func(t *testing.T) {
		port := testpeers.FreePort(t)
		s, _ := dockerSource(t, d, func(s *Docker) {
			s.DockerContainerPrivatePort = port
			s.DockerContainerLabel = "between.test=hostnet"
		})
		updates, errs := dockerRun(t, s)
		dockerWaitList(t, updates, "", 5*time.Second)

		// another label value: not listed
		d.Run("hostnet-other", testpeers.FreePort(t), "--network", "host", "--label", "between.test=other")
		want := "127.0.0.1:" + strconv.Itoa(port)
		for i, name := range []string{"hostnet-a", "hostnet-b"} {
			start := time.Now()
			d.Run(name, port, "--network", "host", "--label", "between.test=hostnet")
			dockerCheckDelay(t, "run "+name, start, time.Now(), dockerWaitList(t, updates, want, 3*time.Second))
			start = time.Now()
			if i == 0 {
				d.Docker("stop", "-t", "1", name)
			} else {
				d.Docker("rm", "-f", name)
			}
			dockerCheckDelay(t, "stop/rm "+name, start, time.Now(), dockerWaitList(t, updates, "", 3*time.Second))
		}
		select {
		case err := <-errs:
			t.Fatalf("unexpected error: %v", err)
		default:
		}
	})

	// one user-defined bridge network for the next subtests
	d.Docker("network", "create", "--driver", "bridge", "betweennet")
	netID := d.Docker("network", "inspect", "-f", "{{.Id}}", "betweennet")
	pub := []string{"--network", "betweennet", "--label", "between.test=pub"}
	d.Run("pub-local", 7000, append(pub, "-p", "127.0.0.1::7000")...)
	d.Run("pub-all", 7000, append(pub, "-p", "7000")...)
	d.Run("pub-env", 7000, append(pub, "-p", "127.0.0.1::7000", "-e", "HOST_IP=127.0.0.2")...)
	d.Run("pub-exposed", 7000, append(pub, "--expose", "7000")...)
	d.Run("pub-paused", 7000, append(pub, "-p", "127.0.0.1::7000")...)
	d.Docker("pause", "pub-paused")
	d.Run("other-label", 7000, "--network", "betweennet", "--label", "between.test=other", "-p", "127.0.0.1::7000")
	hostPort := func(name string) string {
		out := d.Docker("port", name, "7000/tcp")
		// "127.0.0.1:49153" or "0.0.0.0:49154\n:::49154"
		first := strings.Fields(out)[0]
		return first[strings.LastIndex(first, ":")+1:]
	}
	ip := func(name string) string {
		return d.Docker("inspect", "-f", "{{.NetworkSettings.Networks.betweennet.IPAddress}}", name)
	}
	pubLabel := func(s *Docker) { s.DockerContainerPrivatePort = 7000; s.DockerContainerLabel = "between.test=pub" }

	t.Run("published ports", func(t *testing.T) {
		s, logs := dockerSource(t, d, pubLabel)
		want := dockerSorted(fmt.Sprintf("127.0.0.1:%s 127.0.0.1:%s 127.0.0.1:%s", hostPort("pub-local"), hostPort("pub-all"), hostPort("pub-env")))
		if got := dockerFetchList(t, s); got != want {
			t.Fatalf("list %q, want %q", got, want)
		}
		skips := strings.Join(dockerSkipped(logs), "\n")
		for _, w := range []string{"pub-exposed: does not publish private port 7000", "pub-paused: container is paused"} {
			if !strings.Contains(skips, w) {
				t.Errorf("skip log lines\n%s\nlack %q", skips, w)
			}
		}
		if strings.Contains(skips, "other-label") {
			t.Errorf("a container without the label was considered:\n%s", skips)
		}
	})

	t.Run("host from env var", func(t *testing.T) {
		s, _ := dockerSource(t, d, func(s *Docker) { pubLabel(s); s.DockerContainerHostEnvVar = "HOST_IP" })
		want := dockerSorted(fmt.Sprintf("127.0.0.1:%s 127.0.0.1:%s 127.0.0.2:%s", hostPort("pub-local"), hostPort("pub-all"), hostPort("pub-env")))
		if got := dockerFetchList(t, s); got != want {
			t.Fatalf("list %q, want %q", got, want)
		}
	})

	t.Run("docker_network", func(t *testing.T) {
		want := dockerSorted(fmt.Sprintf("%s:7000 %s:7000 %s:7000 %s:7000", ip("pub-local"), ip("pub-all"), ip("pub-env"), ip("pub-exposed")))
		for _, network := range []string{"betweennet", netID[:12]} {
			s, logs := dockerSource(t, d, func(s *Docker) { pubLabel(s); s.DockerNetwork = network })
			if got := dockerFetchList(t, s); got != want {
				t.Fatalf("docker_network %s: list %q, want %q", network, got, want)
			}
			if skips := strings.Join(dockerSkipped(logs), "\n"); !strings.Contains(skips, "pub-paused: container is paused") {
				t.Errorf("skip log lines %q lack the paused container", skips)
			}
		}

		// network connect and disconnect are followed too
		s, wlogs := dockerSource(t, d, func(s *Docker) { pubLabel(s); s.DockerNetwork = "betweennet" })
		defer func() {
			if t.Failed() {
				t.Logf("skips: %q", dockerSkipped(wlogs))
			}
		}()
		updates, _ := dockerRun(t, s)
		dockerWaitList(t, updates, want, 5*time.Second)
		exposedIP := ip("pub-exposed")
		start := time.Now()
		d.Docker("network", "disconnect", "betweennet", "pub-exposed")
		returned := time.Now()
		without := strings.TrimSpace(strings.Replace(want, exposedIP+":7000", "", 1))
		dockerCheckDelay(t, "network disconnect", start, returned, dockerWaitList(t, updates, without, 3*time.Second))
		start = time.Now()
		d.Docker("network", "connect", "betweennet", "pub-exposed")
		returned = time.Now()
		with := strings.Replace(want, exposedIP+":7000", ip("pub-exposed")+":7000", 1)
		dockerCheckDelay(t, "network connect", start, returned, dockerWaitList(t, updates, with, 3*time.Second))
	})

	t.Run("docker_network host", func(t *testing.T) {
		port := testpeers.FreePort(t)
		d.Run("hostnet-c", port, "--network", "host", "--label", "between.test=pub")
		defer d.Docker("rm", "-f", "hostnet-c")
		s, logs := dockerSource(t, d, func(s *Docker) { pubLabel(s); s.DockerNetwork = "host"; s.DockerContainerPrivatePort = port })
		if got, want := dockerFetchList(t, s), "127.0.0.1:"+strconv.Itoa(port); got != want {
			t.Fatalf("list %q, want %q", got, want)
		}
		if skips := strings.Join(dockerSkipped(logs), "\n"); !strings.Contains(skips, `pub-local: not in the host network`) {
			t.Errorf("skip log lines %q lack pub-local", skips)
		}
	})

	t.Run("tls endpoint", func(t *testing.T) {
		unix, _ := dockerSource(t, d, pubLabel)
		want := dockerFetchList(t, unix)
		for _, tt := range []struct {
			name     string
			endpoint string
			ca, cert string
			mention  string
		}{
			{"tcp with docker_tls_enabled", "tcp://" + d.TLSAddr, d.CA, d.Cert, ""},
			{"https", "https://" + d.TLSAddr, d.CA, d.Cert, ""},
			{"no client certificate", "tcp://" + d.TLSAddr, d.CA, "", "certificate"},
			{"wrong CA", "tcp://" + d.TLSAddr, d.OtherCA, d.Cert, "certificate signed by unknown authority"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				s := &Docker{DockerEndpoint: tt.endpoint, DockerTLSEnabled: true, DockerTLSCACertPath: tt.ca}
				pubLabel(s)
				if tt.cert != "" {
					s.DockerTLSCertPath, s.DockerTLSKeyPath = tt.cert, d.Key
				}
				if err := s.Provision(caddy.Context{}); err != nil {
					t.Fatal(err)
				}
				if err := s.Validate(); err != nil {
					t.Fatal(err)
				}
				s.logger = zap.NewNop()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				l, err := s.Fetch(ctx)
				if tt.mention != "" {
					if err == nil || !strings.Contains(err.Error(), tt.mention) {
						t.Fatalf("Fetch = %v, want an error mentioning %q", err, tt.mention)
					}
					t.Logf("error: %v", err)
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if got := dockerSorted(dockerAddresses(l)); got != want {
					t.Fatalf("over TLS %q, over the socket %q", got, want)
				}
			})
		}
	})

	// Last: stops and restarts the daemon.
	t.Run("daemon stopped keeps the last list", func(t *testing.T) {
		port := testpeers.FreePort(t)
		d.Run("survivor", port, "--network", "host", "--label", "between.test=survivor")
		s, _ := dockerSource(t, d, func(s *Docker) { s.DockerContainerPrivatePort = port; s.DockerContainerLabel = "between.test=survivor" })
		updates, errs := dockerRun(t, s)
		want := "127.0.0.1:" + strconv.Itoa(port)
		dockerWaitList(t, updates, want, 5*time.Second)

		d.Stop()
		err := recv(t, errs, 5*time.Second, "error after dockerd stopped")
		if !strings.Contains(err.Error(), "docker") {
			t.Errorf("error %q does not say docker", err)
		}
		t.Logf("error after the daemon stopped: %v", err)
		// keeplast: the errors go on, the list is not replaced
		t.Logf("next error: %v", recv(t, errs, 5*time.Second, "error from the retry"))
		for len(updates) > 0 { // the same list again (the watch's first) is fine
			if u := <-updates; dockerAddresses(u.list) != want {
				t.Fatalf("list replaced while the daemon was down: %q", dockerAddresses(u.list))
			}
		}

		// back up: the container outlived the daemon and is still listed; a
		// stop now shows once the watch is open again
		d.Start()
		restarted := time.Now()
		dockerWaitList(t, updates, want, 40*time.Second)
		t.Logf("watching again %s after the daemon restarted", time.Since(restarted).Round(time.Millisecond))
		d.Docker("stop", "-t", "1", "survivor")
		dockerWaitList(t, updates, "", 3*time.Second)
	})
}
