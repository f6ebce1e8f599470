package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"

	"github.com/caddy-between/between/backend"
	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"go.uber.org/zap"
)

// The fuzz targets of the answer formats the sources parse (plaintext and
// json, and exec, which reads plaintext lines, are fuzzed beside their
// tests). Each feeds arbitrary bytes to the step that turns a server's answer
// into backends, and checks that what comes out is usable.

// checkUsable fails t unless every backend has an address that a backend
// line can say unchanged (a non-empty host without white space, a port from
// 1 to 65535 in canonical form) and attributes that
// are not negative; with unique, no two backends share an address.
func checkUsable(t *testing.T, list []backend.Backend, unique bool, input any) {
	t.Helper()
	seen := make(map[string]bool, len(list))
	for _, b := range list {
		host, port, err := backend.SplitHostPort(b.Address())
		if err != nil || host != b.Host || port != b.Port {
			t.Fatalf("backend %+v: address %q is not host:port (%v) from %q", b, b.Address(), err, input)
		}
		if strings.ContainsFunc(b.Host, func(r rune) bool { return unicode.IsSpace(r) }) {
			t.Fatalf("backend %+v: host with white space from %q", b, input)
		}
		if b.Weight < 0 || b.Priority < 0 || b.MaxConnections < 0 {
			t.Fatalf("backend %+v: negative attribute from %q", b, input)
		}
		if unique && seen[b.Address()] {
			t.Fatalf("backend %s listed twice from %q", b.Address(), input)
		}
		seen[b.Address()] = true
	}
}

// addFiles adds the files matching pattern as seeds.
func addFiles(f *testing.F, pattern string) {
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed files %s", pattern)
	}
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

// FuzzConsulEntries: Consul's /v1/health/service answer, decoded as the
// Consul client does, gives usable backends, at most one per entry.
func FuzzConsulEntries(f *testing.F) {
	addFiles(f, "testdata/consul/*.json")
	for _, seed := range []string{
		`[{"Node":{"Address":"10.0.0.9"},"Service":{"Port":81}}]`,
		`[{"Service":{"Address":"a b","Port":1}},{"Service":{"Address":"h","Port":70000}},{"Node":null,"Service":null}]`,
		`[{"Service":{"Address":"[::1]","Port":1,"Weights":{"Passing":-1,"Warning":-2}},"Checks":[{"Status":"warning"}]}]`,
		`[{"Service":{"Address":"h","Port":1,"Tags":["sni=","sni=a b","sni=x"]}}]`, `[null]`, `{}`,
	} {
		f.Add([]byte(seed))
	}
	c := &Consul{logger: zap.NewNop()}
	f.Fuzz(func(t *testing.T, body []byte) {
		var entries []*api.ServiceEntry
		if json.NewDecoder(bytes.NewReader(body)).Decode(&entries) != nil {
			return
		}
		list := c.backends(entries)
		if len(list) > len(entries) {
			t.Fatalf("%d backends from %d entries", len(list), len(entries))
		}
		checkUsable(t, list, false, body)
	})
}

// FuzzEtcdKeys: keys PREFIX/HOST:PORT and their values (one "key<TAB>value"
// per line of the input) give backends that survive a backend line round
// trip, one per address, in key order.
func FuzzEtcdKeys(f *testing.F) {
	for _, seed := range []string{
		"127.0.0.1:6379\tweight=2 priority=3\n[::1]:6380\tsni=db.example max_connections=10\nredis.internal:6381\t",
		"10.0.0.1:80\t\n10.0.0.1:0080\tweight=3\n10.0.0.2:80\tweight=-1\n\tweight=1\nbad\t\n",
		"a b:1\t\n[::1]:1\tsni=\n::1:1\t\nh:1\tWEIGHT=2 weight=3\nh:2\tsni=a sni=b\nh:3\tx y\n",
	} {
		f.Add(seed)
	}
	e := &Etcd{Prefix: "/between", dir: "/between/", live: new(etcdLive), logger: zap.NewNop()}
	f.Fuzz(func(t *testing.T, doc string) {
		kvs := make(map[string]keyValue)
		for i, line := range strings.Split(doc, "\n") {
			key, value, _ := strings.Cut(line, "\t")
			kvs[e.dir+key] = keyValue{value: value, rev: int64(i + 1)}
		}
		list := e.backends(kvs)
		checkUsable(t, list, true, doc)
		for _, b := range list {
			back, err := backend.Parse(b.String())
			if err != nil || !back.SameAttributes(&b) {
				t.Fatalf("backend %+v: String %q parses as %+v, %v (from %q)", b, b.String(), back, err, doc)
			}
		}
	})
}

// answerTransport answers every request with its function, from memory.
type answerTransport func(r *http.Request) (status int, body []byte)

func (a answerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	status, body := a(r)
	return &http.Response{
		StatusCode: status, Status: http.StatusText(status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)), Request: r,
	}, nil
}

// FuzzLXDInstances: an answer to GET /1.0/instances?recursion=2 gives an
// error or usable backends whose hosts are IP addresses, at most one per
// instance, with every setting that changes how an instance is read.
func FuzzLXDInstances(f *testing.F) {
	addFiles(f, "testdata/lxd/*.json")
	for _, seed := range []string{
		`{"type":"sync","metadata":[{"name":"a","status":"Running","config":{"user.port":"80"},"state":{"network":{"eth0":{"addresses":[{"family":"inet","address":"10.0.0.1","scope":"global"}]}}}}]}`,
		`{"type":"sync","metadata":[{"name":"a","status":"Running","expanded_config":{"user.port":" 65535 ","user.if":"lo","user.sni":"a b"},"state":{"network":{"lo":{"addresses":[{"family":"inet6","address":"::1","scope":"local"},{"family":"inet","address":"not an address","scope":"global"}]}}}}]}`,
		`{"type":"sync","metadata":[{"name":"a","status":"Running","state":null},{"status":"Frozen"},null]}`,
		`{"type":"error","error_code":403,"error":"not authorized"}`, `{"type":"async","metadata":{}}`, `{"type":"sync","metadata":{}}`,
	} {
		f.Add([]byte(seed))
	}
	sources := []*LXD{
		{ContainerPort: 80},
		{ContainerPortKey: "user.port", ContainerInterfaceKey: "user.if", ContainerSNIKey: "user.sni"},
		{ContainerLabelKey: "user.between.pool", ContainerLabelValue: "web", ContainerPortKey: "user.between.port", ContainerAddressType: "IPv6"},
	}
	for _, l := range sources {
		l.conn, l.logger = new(lxdConn), zap.NewNop()
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		client := &http.Client{Transport: answerTransport(func(*http.Request) (int, []byte) { return http.StatusOK, body })}
		for _, l := range sources {
			var instances []lxdInstance
			if lxdCall(context.Background(), client, http.MethodGet, "http://lxd/1.0/instances?recursion=2", nil, &instances) != nil {
				return
			}
			list := l.backends(instances)
			if len(list) > len(instances) {
				t.Fatalf("%d backends from %d instances", len(list), len(instances))
			}
			checkUsable(t, list, false, body)
			for _, b := range list {
				if _, err := netip.ParseAddr(b.Host); err != nil {
					t.Fatalf("backend %+v: host is not an IP address (from %q)", b, body)
				}
			}
		}
	})
}

// FuzzDockerContainers: an answer to GET /containers/json, and one to GET
// /containers/ID/json for the host environment variable, give an error or
// usable backends, one per address, with every network setting.
func FuzzDockerContainers(f *testing.F) {
	list, err := os.ReadFile("testdata/docker/containers.json")
	if err != nil {
		f.Fatal(err)
	}
	inspects, _ := filepath.Glob("testdata/docker/inspect/*.json")
	for _, p := range inspects {
		inspect, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(list, inspect)
	}
	for _, seed := range [][2]string{
		{`[{"Id":"a","State":"running","Ports":[{"PrivatePort":7000,"PublicPort":1,"IP":"::"},{"PrivatePort":7000,"PublicPort":2,"IP":"0.0.0.0"}]},` +
			`{"Id":"b","State":"running","Ports":[{"PrivatePort":7000,"PublicPort":1,"IP":"0.0.0.0"}]}]`, `{"Config":{"Env":["NAME=[::1]"]}}`},
		{`[{"Id":"c","HostConfig":{"NetworkMode":"host"},"NetworkSettings":{"Networks":{"tnet":{"NetworkID":"0123456789abcdef","IPAddress":"a b"}}}}]`, `{"Config":{"Env":["NAME=a b","NAME"]}}`},
		{`[{"Id":"d","NetworkSettings":{"Networks":{"x":{"NetworkID":"tnet","GlobalIPv6Address":"fd00::1"}}},"Ports":[{"PrivatePort":7000,"PublicPort":70000}]}]`, `null`},
		{`[null,{}]`, `{}`},
	} {
		f.Add([]byte(seed[0]), []byte(seed[1]))
	}
	var sources []*Docker
	for _, network := range []string{"", "host", "tnet", "0123456789ab"} {
		for _, env := range []string{"", "NAME"} {
			s := &Docker{DockerEndpoint: "tcp://127.0.0.1:2375", DockerContainerPrivatePort: 7000, DockerNetwork: network, DockerContainerHostEnvVar: env}
			if err := s.Provision(caddyContext()); err != nil {
				f.Fatal(err)
			}
			s.logger = zap.NewNop()
			sources = append(sources, s)
		}
	}
	f.Fuzz(func(t *testing.T, containers, inspect []byte) {
		transport := answerTransport(func(r *http.Request) (int, []byte) {
			if r.URL.Path == "/containers/json" {
				return http.StatusOK, containers
			}
			return http.StatusOK, inspect
		})
		for _, s := range sources {
			s.client = &http.Client{Transport: transport}
			list, err := s.Fetch(context.Background())
			if err != nil {
				continue
			}
			checkUsable(t, list, true, [2]string{string(containers), string(inspect)})
		}
	})
}

// FuzzSRVAnswer: a DNS message as the answer to the SRV question gives an
// error or usable backends whose hosts are IP addresses, one per address,
// with the records' priority and weight. Targets without an address in the
// additional section are looked up in the message's authority section.
func FuzzSRVAnswer(f *testing.F) {
	const name = "_svc._tcp.example.test."
	for _, seed := range [][]string{
		{"0 IN SRV 1 10 6379 b1.example.test.", "0 IN SRV 2 5 6380 b2.example.test.", "+b1.example.test. 0 IN A 127.0.0.1", "+b2.example.test. 0 IN AAAA ::1"},
		{"0 IN SRV 0 0 0 b1.example.test.", "0 IN SRV 0 0 1 .", "0 IN SRV 0 0 1 b3.example.test.", "-b3.example.test. 0 IN AAAA ::ffff:1.2.3.4"},
		{"0 IN SRV 0 0 1 B1.Example.Test.", "0 IN SRV 0 0 1 b1.example.test.", "+b1.example.test. 0 IN A 10.0.0.1", "+b1.example.test. 0 IN A 10.0.0.1"},
		{"0 IN SRV 65535 65535 65535 a\\032b.example.test.", "+a\\032b.example.test. 0 IN A 0.0.0.0"},
	} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeSRV)
		m.Response = true
		for _, rec := range seed {
			section, owner := &m.Answer, name+" "
			switch rec[0] {
			case '+':
				section, owner, rec = &m.Extra, "", rec[1:]
			case '-':
				section, owner, rec = &m.Ns, "", rec[1:]
			}
			rr, err := dns.NewRR(owner + rec)
			if err != nil {
				f.Fatal(err)
			}
			*section = append(*section, rr)
		}
		wire, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire)
	}
	s := &SRV{LookupServer: "127.0.0.1:53", LookupPattern: name, logger: zap.NewNop()}
	f.Fuzz(func(t *testing.T, wire []byte) {
		resp := new(dns.Msg)
		if resp.Unpack(wire) != nil {
			return
		}
		authority := addressesOf(resp.Ns)
		list, err := s.backends(name, resp, func(target string) ([]netip.Addr, string, error) {
			if a := authority.of(target); len(a) > 0 {
				return a, "", nil
			}
			return nil, "A: no records", nil
		})
		if err != nil {
			return
		}
		checkUsable(t, list, true, wire)
		for _, b := range list {
			if _, err := netip.ParseAddr(b.Host); err != nil || b.SNI == "" || strings.HasSuffix(b.SNI, ".") {
				t.Fatalf("backend %+v: want an IP address host and the target as sni (from %q)", b, wire)
			}
			if b.Weight > 65535 || b.Priority > 65535 {
				t.Fatalf("backend %+v: weight or priority beyond an SRV record's (from %q)", b, wire)
			}
		}
	})
}
