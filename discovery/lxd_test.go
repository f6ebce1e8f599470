package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
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

func TestLXDValidate(t *testing.T) {
	for _, tt := range []struct {
		name    string
		l       LXD
		mention string // "" = valid
	}{
		{"defaults with a port", LXD{ContainerPort: 80}, ""},
		{"port key only", LXD{ContainerPortKey: "user.port"}, ""},
		{"https", LXD{ServerAddress: "https://127.0.0.1:8443", ConfigDirectory: "/tmp/x", ContainerPort: 80}, ""},
		{"no port at all", LXD{}, "lxd_container_port"},
		{"port too big", LXD{ContainerPort: 70000}, "lxd_container_port"},
		{"negative port", LXD{ContainerPort: -1}, "lxd_container_port"},
		{"tcp address", LXD{ServerAddress: "tcp://127.0.0.1:8443", ContainerPort: 80}, "lxd_server_address"},
		{"relative socket", LXD{ServerAddress: "unix://lxd.sock", ContainerPort: 80}, "lxd_server_address"},
		{"https with a path", LXD{ServerAddress: "https://h:8443/1.0", ConfigDirectory: "/x", ContainerPort: 80}, "lxd_server_address"},
		{"address type", LXD{ContainerPort: 80, ContainerAddressType: "ipv5"}, "lxd_container_address_type"},
		{"label value without key", LXD{ContainerPort: 80, ContainerLabelValue: "web"}, "lxd_container_label_key"},
		{"remote name with a slash", LXD{ServerAddress: "https://h", ConfigDirectory: "/x", ServerRemoteName: "../x", ContainerPort: 80}, "lxd_server_remote_name"},
		{"https without config directory", LXD{ServerAddress: "https://h", ContainerPort: 80}, "lxd_config_directory"},
		{"bad failpolicy", LXD{ContainerPort: 80, Common: Common{FailPolicy: "drop"}}, "failpolicy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantErrNaming(t, "Validate()", tt.l.Validate(), tt.mention)
		})
	}
}

func TestLXDParseAddress(t *testing.T) {
	for _, tt := range []struct {
		addr, socket, base string
		bad                bool
	}{
		{addr: "unix:///var/lib/lxd/unix.socket", socket: "/var/lib/lxd/unix.socket", base: "http://lxd"},
		{addr: "unix:/run/lxd.socket", socket: "/run/lxd.socket", base: "http://lxd"},
		{addr: "https://lxd.example:9443", base: "https://lxd.example:9443"},
		{addr: "https://lxd.example", base: "https://lxd.example:8443"},
		{addr: "https://[::1]", base: "https://[::1]:8443"},
		{addr: "https://127.0.0.1:8443/", base: "https://127.0.0.1:8443"},
		{addr: "http://127.0.0.1:8443", bad: true},
		{addr: "unix://relative/x.sock", bad: true},
		{addr: "https://", bad: true},
		{addr: "https://u:p@h:1", bad: true},
		{addr: "/var/lib/lxd/unix.socket", bad: true},
	} {
		socket, base, err := parseLXDAddress(tt.addr)
		if tt.bad {
			if err == nil {
				t.Errorf("parseLXDAddress(%q) = %q, %q; want an error", tt.addr, socket, base)
			}
			continue
		}
		if err != nil || socket != tt.socket || base != tt.base {
			t.Errorf("parseLXDAddress(%q) = %q, %q, %v; want %q, %q", tt.addr, socket, base, err, tt.socket, tt.base)
		}
	}
}

func TestLXDProvisionDefaults(t *testing.T) {
	t.Setenv("HOME", "/home/between")
	l := &LXD{ContainerPort: 80}
	if err := l.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	want := LXD{ServerAddress: "unix:///var/lib/lxd/unix.socket", ServerRemoteName: "local",
		ConfigDirectory: "/home/between/.config/lxc", ContainerInterface: "eth0", ContainerAddressType: "IPv4", ContainerPort: 80}
	if l.ServerAddress != want.ServerAddress || l.ServerRemoteName != want.ServerRemoteName ||
		l.ConfigDirectory != want.ConfigDirectory || l.ContainerInterface != want.ContainerInterface ||
		l.ContainerAddressType != want.ContainerAddressType {
		t.Fatalf("after Provision: %+v", l)
	}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestLXDJSON(t *testing.T) {
	in := `{"lxd_server_address":"https://10.0.0.1:8443","lxd_server_remote_name":"lab","lxd_server_remote_password":"pw",
		"lxd_config_directory":"/etc/between/lxc","lxd_generate_client_certs":true,"lxd_accept_server_cert":true,
		"lxd_container_label_key":"user.pool","lxd_container_label_value":"web","lxd_container_port":8080,
		"lxd_container_port_key":"user.port","lxd_container_interface":"eth1","lxd_container_interface_key":"user.iface",
		"lxd_container_sni_key":"user.sni","lxd_container_address_type":"IPv6","interval":"2s"}`
	var l LXD
	dec := json.NewDecoder(strings.NewReader(in))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		t.Fatal(err)
	}
	want := LXD{Common: Common{Interval: caddy.Duration(2 * time.Second)}, ServerAddress: "https://10.0.0.1:8443",
		ServerRemoteName: "lab", ServerRemotePassword: "pw", ConfigDirectory: "/etc/between/lxc", GenerateClientCerts: true,
		AcceptServerCert: true, ContainerLabelKey: "user.pool", ContainerLabelValue: "web", ContainerPort: 8080,
		ContainerPortKey: "user.port", ContainerInterface: "eth1", ContainerInterfaceKey: "user.iface",
		ContainerSNIKey: "user.sni", ContainerAddressType: "IPv6"}
	if !lxdSameConfig(&l, &want) {
		t.Fatalf("decoded %+v\nwant    %+v", l, want)
	}
	out, err := json.Marshal(&LXD{ContainerPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"lxd_container_port":80}` {
		t.Fatalf("defaults marshal to %s", out)
	}
}

// lxdSameConfig compares the configuration fields of two LXD sources.
func lxdSameConfig(a, b *LXD) bool {
	return a.Common == b.Common && a.ServerAddress == b.ServerAddress && a.ServerRemoteName == b.ServerRemoteName &&
		a.ServerRemotePassword == b.ServerRemotePassword && a.ConfigDirectory == b.ConfigDirectory &&
		a.GenerateClientCerts == b.GenerateClientCerts && a.AcceptServerCert == b.AcceptServerCert &&
		a.ContainerLabelKey == b.ContainerLabelKey && a.ContainerLabelValue == b.ContainerLabelValue &&
		a.ContainerPort == b.ContainerPort && a.ContainerPortKey == b.ContainerPortKey &&
		a.ContainerInterface == b.ContainerInterface && a.ContainerInterfaceKey == b.ContainerInterfaceKey &&
		a.ContainerSNIKey == b.ContainerSNIKey && a.ContainerAddressType == b.ContainerAddressType
}

func TestLXDCaddyfile(t *testing.T) {
	runCaddyfileCases(t, []caddyfileCase[LXD]{
		{"address only", `lxd unix:///var/snap/lxd/common/lxd/unix.socket`,
			LXD{ServerAddress: "unix:///var/snap/lxd/common/lxd/unix.socket"}, ""},
		{"every field", `lxd {
				server_address https://lxd.example:8443
				remote_name lab
				remote_password "s3cret pw"
				config_directory /etc/between/lxc
				generate_client_certs
				accept_server_cert true
				container_label_key user.pool
				container_label_value web
				container_port 8080
				container_port_key user.port
				container_interface eth1
				container_interface_key user.iface
				container_sni_key user.sni
				container_address_type IPv6
				interval 2s
				timeout 1s
				failpolicy setempty
			}`,
			LXD{Common: Common{Interval: caddy.Duration(2 * time.Second), Timeout: caddy.Duration(time.Second), FailPolicy: "setempty"},
				ServerAddress: "https://lxd.example:8443", ServerRemoteName: "lab", ServerRemotePassword: "s3cret pw",
				ConfigDirectory: "/etc/between/lxc", GenerateClientCerts: true, AcceptServerCert: true,
				ContainerLabelKey: "user.pool", ContainerLabelValue: "web", ContainerPort: 8080, ContainerPortKey: "user.port",
				ContainerInterface: "eth1", ContainerInterfaceKey: "user.iface", ContainerSNIKey: "user.sni", ContainerAddressType: "IPv6"}, ""},
		{"gobetween names", `lxd {
				lxd_server_remote_name lab
				lxd_container_port 80
				lxd_accept_server_cert false
			}`, LXD{ServerRemoteName: "lab", ContainerPort: 80}, ""},
		{"two addresses", `lxd unix:///a unix:///b`, LXD{}, "argument"},
		{"port not a number", "lxd {\n container_port http\n}", LXD{}, "container_port"},
		{"port 0", "lxd {\n container_port 0\n}", LXD{}, "container_port"},
		{"bool garbage", "lxd {\n accept_server_cert maybe\n}", LXD{}, "accept_server_cert"},
		{"bool extra", "lxd {\n generate_client_certs true false\n}", LXD{}, "argument"},
		{"string without value", "lxd {\n container_label_key\n}", LXD{}, "argument"},
		{"string extra", "lxd {\n container_interface eth0 eth1\n}", LXD{}, "argument"},
		{"unknown", "lxd {\n container_colour red\n}", LXD{}, "container_colour"},
	}, func(got, want *LXD) bool {
		return lxdSameConfig(got, want)
	})
}

// fakeLXD serves handler on a unix socket and returns the server address.
func fakeLXD(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lxdfake")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "unix.socket")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "unix://" + sock
}

// lxdObserved provisions l with a logger whose entries the test can read.
func lxdObserved(t *testing.T, l *LXD) *observer.ObservedLogs {
	t.Helper()
	if err := l.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	l.logger = zap.New(core)
	return logs
}

// lxdSkips returns "instance: reason" for every "instance skipped" entry.
func lxdSkips(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.FilterMessage("instance skipped").All() {
		m := e.ContextMap()
		out = append(out, fmt.Sprintf("%s: %s", m["instance"], m["reason"]))
	}
	return out
}

// lxdCtx bounds one fetch of a test.
func lxdCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func lxdLines(list []backend.Backend) string {
	s := make([]string, len(list))
	for i := range list {
		s[i] = list[i].String()
	}
	return strings.Join(s, ", ")
}

// The instance list in testdata/lxd/instances.json was captured from LXD
// 5.0.2 (other, web1, web2) and extended with variants of web1 for the edge
// cases: a label set on a profile only (web3), a port label that is no number,
// no port label, only a loopback interface, no eth0, only link-local
// addresses, a frozen instance, another label value (db1) and a virtual
// machine whose interface is enp5s0.
func TestLXDFetchFromTestdata(t *testing.T) {
	data, err := os.ReadFile("testdata/lxd/instances.json")
	if err != nil {
		t.Fatal(err)
	}
	addr := fakeLXD(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/1.0/instances" || r.URL.Query().Get("recursion") != "2" {
			http.Error(w, `{"type":"error","error_code":404,"error":"not found"}`, 404)
			return
		}
		w.Write(data)
	})
	web := LXD{ServerAddress: addr, ContainerLabelKey: "user.between.pool", ContainerLabelValue: "web", ContainerPortKey: "user.between.port"}
	keys := web
	keys.ContainerPort, keys.ContainerInterfaceKey, keys.ContainerSNIKey = 9000, "user.between.iface", "user.between.sni"
	v6 := keys
	v6.ContainerAddressType = "IPv6"
	for _, tt := range []struct {
		name  string
		l     LXD
		want  string
		skips []string
	}{
		{"label value and port key", web,
			"192.0.2.11:8081, 192.0.2.14:8083",
			[]string{
				`bad-port: user.between.port "http" is not a port from 1 to 65535`,
				`link-local-only: no IPv4 address on eth0 (link-local addresses are not used)`,
				`lo-only: no network interface "eth0"`,
				`no-eth0: no network interface "eth0"`,
				`no-port: no port: the instance has no user.between.port and lxd_container_port is not set`,
				`vm1: no network interface "eth0"`,
			}},
		{"interface and sni keys, default port", keys,
			"127.0.0.1:8086 sni=web1.example, 192.0.2.16:9000 sni=web1.example, 192.0.2.20:8090, 192.0.2.11:8081 sni=web1.example, 192.0.2.14:8083",
			[]string{
				`bad-port: user.between.port "http" is not a port from 1 to 65535`,
				`link-local-only: no IPv4 address on eth0 (link-local addresses are not used)`,
				`no-eth0: no network interface "eth0"`,
			}},
		{"IPv6", v6,
			"[::1]:8086 sni=web1.example, [2001:db8::16]:9000 sni=web1.example, [2001:db8::20]:8090, [2001:db8::11]:8081 sni=web1.example, [2001:db8::14]:8083",
			[]string{
				`bad-port: user.between.port "http" is not a port from 1 to 65535`,
				`link-local-only: no IPv6 address on eth0 (link-local addresses are not used)`,
				`no-eth0: no network interface "eth0"`,
			}},
		{"every running instance on eth0", LXD{ServerAddress: addr, ContainerPort: 80},
			"192.0.2.15:80, 192.0.2.21:80, 192.0.2.16:80, 192.0.2.13:80, 192.0.2.11:80, 192.0.2.14:80",
			[]string{
				`link-local-only: no IPv4 address on eth0 (link-local addresses are not used)`,
				`lo-only: no network interface "eth0"`,
				`no-eth0: no network interface "eth0"`,
				`vm1: no network interface "eth0"`,
			}},
		{"label key with any value, port fallback, loopback", LXD{ServerAddress: addr, ContainerLabelKey: "user.between.pool",
			ContainerPortKey: "user.between.port", ContainerPort: 80, ContainerInterface: "lo"},
			"127.0.0.1:5432, 127.0.0.1:8088, 127.0.0.1:8086, 127.0.0.1:8087, 127.0.0.1:80, 127.0.0.1:8090, 127.0.0.1:8081, 127.0.0.1:8083",
			[]string{`bad-port: user.between.port "http" is not a port from 1 to 65535`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := tt.l
			logs := lxdObserved(t, &l)
			got, err := l.Fetch(lxdCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			if lxdLines(got) != tt.want {
				t.Errorf("Fetch =\n  %s\nwant\n  %s", lxdLines(got), tt.want)
			}
			for _, b := range got {
				if b.Weight != 1 || b.Priority != 1 || b.MaxConnections != 0 {
					t.Errorf("backend %s: weight %d priority %d max_connections %d, want 1 1 0", b.Address(), b.Weight, b.Priority, b.MaxConnections)
				}
			}
			if s := strings.Join(lxdSkips(logs), "\n"); s != strings.Join(tt.skips, "\n") {
				t.Errorf("skipped:\n%s\nwant:\n%s", s, strings.Join(tt.skips, "\n"))
			}
			// the same skips are not logged again on the next fetch
			n := logs.Len()
			if _, err := l.Fetch(lxdCtx(t)); err != nil {
				t.Fatal(err)
			}
			if logs.Len() != n {
				t.Errorf("second fetch logged again: %v", lxdSkips(logs)[len(tt.skips):])
			}
		})
	}
}

// A skipped instance is logged again when its reason changes or when it was
// usable in between.
func TestLXDSkipLoggedOncePerReason(t *testing.T) {
	var mu sync.Mutex
	port := "x"
	addr := fakeLXD(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		p := port
		mu.Unlock()
		fmt.Fprintf(w, `{"type":"sync","status_code":200,"metadata":[{"name":"c1","status":"Running",
			"expanded_config":{"user.port":%q},"state":{"network":{"eth0":{"addresses":[{"family":"inet","address":"192.0.2.1","scope":"global"}]}}}}]}`, p)
	})
	l := &LXD{ServerAddress: addr, ContainerPortKey: "user.port"}
	logs := lxdObserved(t, l)
	for i, step := range []struct {
		port, want string
		logs       int
	}{
		{"x", "", 1}, {"x", "", 1}, {"0", "", 2}, {"0", "", 2}, {"80", "192.0.2.1:80", 2}, {"y", "", 3},
	} {
		mu.Lock()
		port = step.port
		mu.Unlock()
		got, err := l.Fetch(lxdCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		if lxdLines(got) != step.want || logs.Len() != step.logs {
			t.Fatalf("step %d (port %q): list %q, %d log entries; want %q, %d", i, step.port, lxdLines(got), logs.Len(), step.want, step.logs)
		}
	}
}

func TestLXDFetchErrors(t *testing.T) {
	for _, tt := range []struct {
		name    string
		handler http.HandlerFunc
		mention []string
	}{
		{"LXD error", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(403)
			w.Write([]byte(`{"type":"error","status":"","status_code":0,"operation":"","error_code":403,"error":"not authorized","metadata":null}`))
		}, []string{"lxd: listing instances", "403", "not authorized"}},
		{"not JSON", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(502)
			w.Write([]byte("<html>bad gateway</html>"))
		}, []string{"lxd: listing instances", "HTTP 502", "not an LXD answer"}},
		{"metadata of the wrong shape", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"type":"sync","status_code":200,"metadata":{"name":"c1"}}`))
		}, []string{"unexpected metadata"}},
		{"async answer", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"type":"async","status_code":100,"metadata":{}}`))
		}, []string{`unexpected answer type "async"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := &LXD{ServerAddress: fakeLXD(t, tt.handler), ContainerPort: 80}
			lxdObserved(t, l)
			got, err := l.Fetch(lxdCtx(t))
			if err == nil {
				t.Fatalf("Fetch = %v, want an error", lxdLines(got))
			}
			wantErrParts(t, err, tt.mention...)
		})
	}
	t.Run("no socket", func(t *testing.T) {
		l := &LXD{ServerAddress: "unix:///nonexistent/lxd/unix.socket", ContainerPort: 80}
		lxdObserved(t, l)
		_, err := l.Fetch(lxdCtx(t))
		if err == nil || !strings.Contains(err.Error(), "/nonexistent/lxd/unix.socket") {
			t.Fatalf("Fetch error = %v, want one naming the socket", err)
		}
	})
	t.Run("hanging server honours the deadline", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		l := &LXD{ServerAddress: fakeLXD(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}), ContainerPort: 80}
		lxdObserved(t, l)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := l.Fetch(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Fetch error = %v, want the deadline", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("Fetch returned after %v", took)
		}
	})
}

// ---- the real LXD daemon ----

// lxdCreate makes a stopped instance (name gets the daemon's prefix) with the
// config keys given and, when addr4 or addr6 is set, an eth0 (a veth pair
// without a host address) that the init gives those addresses.
func lxdCreate(t testing.TB, d *testpeers.LXD, name string, config map[string]string, addr4, addr6 string) string {
	t.Helper()
	full := d.Prefix + name
	args := []string{"init", "bb", full}
	for k, v := range config {
		args = append(args, "-c", k+"="+v)
	}
	if addr4 != "" {
		args = append(args, "-c", "environment.ADDR4="+addr4)
	}
	if addr6 != "" {
		args = append(args, "-c", "environment.ADDR6="+addr6)
	}
	d.Lxc(t, args...)
	if addr4 != "" || addr6 != "" {
		d.Lxc(t, "config", "device", "add", full, "eth0", "nic", "nictype=p2p", "name=eth0")
	}
	return full
}

// lxdFollower runs a Runner over a source and keeps its latest list.
type lxdFollower struct {
	mu     sync.Mutex
	list   []backend.Backend
	lists  int
	errs   []error
	cancel context.CancelFunc
	done   chan struct{}
}

func lxdFollow(t *testing.T, src Configured) *lxdFollower {
	ctx, cancel := context.WithCancel(context.Background())
	f := &lxdFollower{cancel: cancel, done: make(chan struct{})}
	r := &Runner{
		Source: src,
		Update: func(l []backend.Backend) {
			f.mu.Lock()
			f.list, f.lists = l, f.lists+1
			f.mu.Unlock()
		},
		OnError: func(err error) {
			f.mu.Lock()
			f.errs = append(f.errs, err)
			f.mu.Unlock()
		},
	}
	go func() {
		defer close(f.done)
		r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-f.done
	})
	return f
}

func (f *lxdFollower) current() (string, int, []error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return lxdLines(f.list), f.lists, append([]error(nil), f.errs...)
}

// waitList waits until the latest list is want and returns how long that took.
func (f *lxdFollower) waitList(t *testing.T, within time.Duration, want string) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if got, _, _ := f.current(); got == want {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	got, _, errs := f.current()
	t.Fatalf("after %v the list is %q, want %q (errors: %v)", within, got, want, errs)
	return 0
}

// TestLXDReal runs the lxd source against a real LXD daemon: instances that
// start, stop and get labelled show in the list (interval 1s), the address
// keys work on real instance state, HTTPS with a client certificate works
// (generated, trusted with a password or a token, server certificate pinned),
// and a stopped daemon is an error that leaves the last list in place.
func TestLXDReal(t *testing.T) {
	d := testpeers.StartLXD(t, "t")
	t.Run("follows instances", func(t *testing.T) {
		web1 := lxdCreate(t, d, "web1", map[string]string{"user.between.pool": "web", "user.between.port": "8081"}, "192.0.2.11/24", "")
		web2 := lxdCreate(t, d, "web2", map[string]string{"user.between.pool": "web", "user.between.port": "8082"}, "192.0.2.12/24", "")
		other := lxdCreate(t, d, "other", map[string]string{"user.between.port": "8083"}, "192.0.2.13/24", "")
		d.Lxc(t, "start", web1, other)
		l := &LXD{Common: Common{Interval: caddy.Duration(time.Second)}, ServerAddress: "unix://" + d.Socket,
			ContainerLabelKey: "user.between.pool", ContainerLabelValue: "web", ContainerPortKey: "user.between.port"}
		lxdObserved(t, l)
		f := lxdFollow(t, l)
		f.waitList(t, 10*time.Second, "192.0.2.11:8081")
		for _, step := range []struct {
			what   string
			change []string
			want   string
		}{
			{"web2 started", []string{"start", web2}, "192.0.2.11:8081, 192.0.2.12:8082"},
			{"web1 stopped", []string{"stop", web1}, "192.0.2.12:8082"},
			{"other labelled web", []string{"config", "set", other, "user.between.pool", "web"}, "192.0.2.13:8083, 192.0.2.12:8082"},
			{"web2's port label changed", []string{"config", "set", web2, "user.between.port", "9092"}, "192.0.2.13:8083, 192.0.2.12:9092"},
			{"other's label value changed", []string{"config", "set", other, "user.between.pool", "db"}, "192.0.2.12:9092"},
			{"web1 started again", []string{"start", web1}, "192.0.2.11:8081, 192.0.2.12:9092"},
			{"web2's label removed", []string{"config", "unset", web2, "user.between.pool"}, "192.0.2.11:8081"},
			{"web1 stopped", []string{"stop", web1}, ""},
		} {
			start := time.Now()
			d.Lxc(t, step.change...)
			ran := time.Since(start)
			f.waitList(t, 5*time.Second, step.want)
			t.Logf("%-28s: lxc took %v, the list followed %v after it began", step.what, ran.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		}
		if _, _, errs := f.current(); len(errs) > 0 {
			t.Errorf("fetch errors: %v", errs)
		}
		d.Lxc(t, "stop", other)
	})

	t.Run("address keys on real instances", func(t *testing.T) {
		v6 := lxdCreate(t, d, "v6", map[string]string{"user.between.pool": "keys", "user.between.port": "8443", "user.between.sni": "v6.example"}, "192.0.2.21/24", "2001:db8::21/64")
		lo := lxdCreate(t, d, "lo", map[string]string{"user.between.pool": "keys", "user.between.port": "8080", "user.between.iface": "lo"}, "", "")
		nonet := lxdCreate(t, d, "nonet", map[string]string{"user.between.pool": "keys", "user.between.port": "8081"}, "", "")
		d.Lxc(t, "start", v6, lo, nonet)
		defer d.Lxc(t, "stop", v6, lo, nonet)
		for _, tt := range []struct {
			typ, want string
		}{
			{"IPv4", "127.0.0.1:8080, 192.0.2.21:8443 sni=v6.example"},
			{"IPv6", "[::1]:8080, [2001:db8::21]:8443 sni=v6.example"},
		} {
			l := &LXD{ServerAddress: "unix://" + d.Socket, ContainerLabelKey: "user.between.pool", ContainerLabelValue: "keys",
				ContainerPortKey: "user.between.port", ContainerInterfaceKey: "user.between.iface", ContainerSNIKey: "user.between.sni",
				ContainerAddressType: tt.typ}
			logs := lxdObserved(t, l)
			// The init adds the addresses just after the start: wait for them.
			var got string
			lxdWaitUntil(t, 5*time.Second, tt.typ+" list "+tt.want, func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				list, err := l.Fetch(ctx)
				if err != nil {
					t.Fatal(err)
				}
				got = lxdLines(list)
				return got == tt.want
			})
			// (v6 may have been skipped too, while its init was adding the addresses)
			want := fmt.Sprintf(`%s: no network interface "eth0"`, nonet)
			if s := lxdSkips(logs); !slices.Contains(s, want) {
				t.Errorf("%s: skipped %q, want %q among them", tt.typ, s, want)
			}
		}
	})

	t.Run("https with a client certificate", func(t *testing.T) {
		port := testpeers.FreePort(t)
		d.Lxc(t, "config", "set", "core.https_address", fmt.Sprintf("127.0.0.1:%d", port))
		d.Lxc(t, "config", "set", "core.trust_password", "tr-pass")
		web := lxdCreate(t, d, "tls", map[string]string{"user.between.pool": "tls", "user.between.port": "8443", "user.between.iface": "lo"}, "", "")
		d.Lxc(t, "start", web)
		defer d.Lxc(t, "stop", web)
		tokenOut := strings.Fields(d.Lxc(t, "config", "trust", "add", "--name", "between-token"))
		token := tokenOut[len(tokenOut)-1]
		address := fmt.Sprintf("https://127.0.0.1:%d", port)
		first := t.TempDir()
		other, err := os.MkdirTemp("", "other-cert")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(other)
		if err := generateClientCertificate(filepath.Join(other, "c.crt"), filepath.Join(other, "c.key")); err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			name     string
			dir      string // "" = a new empty directory
			pinOther bool   // pin another certificate for the server
			l        LXD
			mention  []string // nil = works
		}{
			{"no client certificate", "", false, LXD{AcceptServerCert: true, ServerRemotePassword: "tr-pass"},
				[]string{"client.crt", "lxd_generate_client_certs"}},
			{"server certificate not accepted", "", false, LXD{GenerateClientCerts: true, ServerRemotePassword: "tr-pass"},
				[]string{"not trusted", "lxd_accept_server_cert", "servercerts/lab.crt"}},
			{"client not trusted, no password", "", false, LXD{GenerateClientCerts: true, AcceptServerCert: true},
				[]string{"does not trust the client certificate", "lxd_server_remote_password"}},
			{"wrong password", "", false, LXD{GenerateClientCerts: true, AcceptServerCert: true, ServerRemotePassword: "nope"},
				[]string{"adding the client certificate", "403", "not authorized"}},
			{"trust password", first, false, LXD{GenerateClientCerts: true, AcceptServerCert: true, ServerRemotePassword: "tr-pass"}, nil},
			{"trusted before, pinned, no password", first, false, LXD{}, nil},
			{"trust token", "", false, LXD{GenerateClientCerts: true, AcceptServerCert: true, ServerRemotePassword: token}, nil},
			{"another certificate pinned", "", true, LXD{GenerateClientCerts: true, AcceptServerCert: true, ServerRemotePassword: "tr-pass"},
				[]string{"not the one pinned", "servercerts/lab.crt"}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				dir := tt.dir
				if dir == "" {
					dir = t.TempDir()
				}
				if tt.pinOther {
					data, err := os.ReadFile(filepath.Join(other, "c.crt"))
					if err != nil {
						t.Fatal(err)
					}
					os.MkdirAll(filepath.Join(dir, "servercerts"), 0o700)
					if err := os.WriteFile(filepath.Join(dir, "servercerts", "lab.crt"), data, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				l := tt.l
				l.ServerAddress, l.ConfigDirectory, l.ServerRemoteName = address, dir, "lab"
				l.ContainerLabelKey, l.ContainerPortKey, l.ContainerInterfaceKey = "user.between.pool", "user.between.port", "user.between.iface"
				l.ContainerLabelValue = "tls"
				lxdObserved(t, &l)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				got, err := l.Fetch(ctx)
				if tt.mention != nil {
					if err == nil {
						t.Fatalf("Fetch = %q, want an error", lxdLines(got))
					}
					t.Logf("error: %v", err)
					wantErrParts(t, err, tt.mention...)
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if lxdLines(got) != "127.0.0.1:8443" {
					t.Fatalf("Fetch = %q, want 127.0.0.1:8443", lxdLines(got))
				}
				for _, f := range []string{"client.crt", "client.key", "servercerts/lab.crt"} {
					if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
						t.Errorf("%s: %v", f, err)
					}
				}
				if st, err := os.Stat(filepath.Join(dir, "client.key")); err == nil && st.Mode().Perm() != 0o600 {
					t.Errorf("client.key has mode %v, want 0600", st.Mode().Perm())
				}
			})
		}
	})

	// Last: the daemon goes away for good.
	t.Run("daemon stopped keeps the last list", func(t *testing.T) {
		web := lxdCreate(t, d, "last", map[string]string{"user.between.pool": "last", "user.between.port": "8080", "user.between.iface": "lo"}, "", "")
		d.Lxc(t, "start", web)
		l := &LXD{Common: Common{Interval: caddy.Duration(time.Second), Timeout: caddy.Duration(500 * time.Millisecond)},
			ServerAddress: "unix://" + d.Socket, ContainerLabelKey: "user.between.pool", ContainerLabelValue: "last",
			ContainerPortKey: "user.between.port", ContainerInterfaceKey: "user.between.iface"}
		lxdObserved(t, l)
		f := lxdFollow(t, l)
		f.waitList(t, 5*time.Second, "127.0.0.1:8080")
		errsSince := func(n int) []error {
			_, _, errs := f.current()
			return errs[n:]
		}
		// A daemon that does not answer: each fetch times out.
		d.Pause()
		_, lists, errs := f.current()
		lxdWaitUntil(t, 5*time.Second, "a timed-out fetch", func() bool { return len(errsSince(len(errs))) > 0 })
		t.Logf("unanswered daemon: %v", errsSince(len(errs))[0])
		d.Resume()
		if got, n, _ := f.current(); got != "127.0.0.1:8080" || n != lists {
			t.Fatalf("while the daemon hung: list %q after %d updates, want the last one kept without updates", got, n-lists)
		}
		// The daemon shut down: each fetch fails to connect.
		_, lists, errs = f.current()
		d.Run(t, nil, "lxd", "shutdown")
		lxdWaitUntil(t, 10*time.Second, "a failed fetch", func() bool {
			for _, err := range errsSince(len(errs)) {
				if strings.Contains(err.Error(), d.Socket) {
					return true
				}
			}
			return false
		})
		got, n, errs2 := f.current()
		t.Logf("daemon gone: %v", errs2[len(errs2)-1])
		// the shutdown itself stops the instance, which a fetch may have
		// seen before the daemon went: the list is the last good one
		if got != "127.0.0.1:8080" && (got != "" || n != lists+1) {
			t.Fatalf("after the shutdown: list %q after %d updates", got, n-lists)
		}
	})
}

// lxdWaitUntil polls cond every 20ms until it holds or within passes.
func lxdWaitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", within, what)
}
