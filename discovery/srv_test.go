package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const srvPattern = "_svc._tcp.example.test."

// fakeDNS is an in-process DNS server (miekg/dns) on one loopback port for
// both UDP and TCP. It answers the SRV question srvPattern with its records,
// and A/AAAA questions with its hosts; knobs make it misbehave.
type fakeDNS struct {
	addr string

	mu          sync.Mutex
	records     []string            // "priority weight port target"
	hosts       map[string][]string // target (no dot) -> addresses
	noExtra     bool                // leave the additional section empty
	truncateUDP bool                // answer every UDP question with TC set and no records
	srvRcode    int                 // answer the SRV question with this code
	addrRcode   int                 // answer A/AAAA questions with this code
	silent      bool                // answer nothing
	silentAddr  bool                // answer nothing to A/AAAA questions
	queries     []string            // "udp SRV name", in arrival order
}

func newFakeDNS(t *testing.T) *fakeDNS {
	t.Helper()
	f := &fakeDNS{hosts: map[string][]string{}}
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	// one port for both protocols: take a UDP port, then its TCP twin
	for range 20 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatalf("no free UDP+TCP port pair: %v", err)
	}
	f.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: f}, {Listener: ln, Handler: f}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		recv(t, started, 5*time.Second, "DNS server start")
		t.Cleanup(func() { srv.Shutdown() })
	}
	return f
}

// set replaces the zone.
func (f *fakeDNS) set(records []string, hosts map[string][]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records, f.hosts = records, hosts
}

func (f *fakeDNS) with(fn func(f *fakeDNS)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeDNS) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.queries...)
}

func (f *fakeDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q := r.Question[0]
	proto := w.LocalAddr().Network()
	f.queries = append(f.queries, proto+" "+dns.TypeToString[q.Qtype]+" "+q.Name)
	isAddr := q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA
	if f.silent || (f.silentAddr && isAddr) {
		return
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if f.truncateUDP && proto == "udp" {
		m.Truncated = true
		w.WriteMsg(m)
		return
	}
	switch {
	case q.Qtype == dns.TypeSRV && dns.CanonicalName(q.Name) == srvPattern:
		m.Rcode = f.srvRcode
		if m.Rcode != dns.RcodeSuccess {
			break
		}
		for _, rec := range f.records {
			rr, err := dns.NewRR(srvPattern + " 0 IN SRV " + rec)
			if err != nil {
				panic(err)
			}
			m.Answer = append(m.Answer, rr)
			if !f.noExtra {
				target := strings.TrimSuffix(rr.(*dns.SRV).Target, ".")
				m.Extra = append(m.Extra, f.addrRRs(target, 0)...)
			}
		}
	case isAddr:
		m.Rcode = f.addrRcode
		if m.Rcode == dns.RcodeSuccess {
			m.Answer = f.addrRRs(strings.TrimSuffix(q.Name, "."), q.Qtype)
		}
	default:
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

// addrRRs are the A and AAAA records of target (only those of qtype, unless 0).
func (f *fakeDNS) addrRRs(target string, qtype uint16) []dns.RR {
	var out []dns.RR
	for _, a := range f.hosts[target] {
		typ := "A"
		if strings.Contains(a, ":") {
			typ = "AAAA"
		}
		if qtype != 0 && dns.TypeToString[qtype] != typ {
			continue
		}
		rr, err := dns.NewRR(fmt.Sprintf("%s. 0 IN %s %s", target, typ, a))
		if err != nil {
			panic(err)
		}
		out = append(out, rr)
	}
	return out
}

// newSRV is a provisioned srv source for the fake server whose logs are observed.
func newSRV(t *testing.T, server, proto string) (*SRV, *observer.ObservedLogs) {
	t.Helper()
	s := &SRV{LookupServer: server, LookupPattern: strings.TrimSuffix(srvPattern, "."), DNSProtocol: proto}
	if err := s.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	s.logger = zap.New(core)
	return s, logs
}

func TestSRVFetch(t *testing.T) {
	twoHosts := map[string][]string{"b1.example.test": {"127.0.0.11"}, "b2.example.test": {"127.0.0.12"}}
	twoRecords := []string{"2 20 7002 b2.example.test.", "1 10 7001 b1.example.test."}
	wantTwo := []string{
		"127.0.0.11:7001 weight=10 sni=b1.example.test",
		"127.0.0.12:7002 weight=20 priority=2 sni=b2.example.test",
	}
	for _, tt := range []struct {
		name    string
		proto   string
		setup   func(f *fakeDNS)
		want    []string // backend lines, in order
		wantErr []string // error text parts
		queries []string // exactly these queries, when set
		warn    []string // a warning containing each of these
	}{
		{
			name:    "additional section present",
			setup:   func(f *fakeDNS) { f.records, f.hosts = twoRecords, twoHosts },
			want:    wantTwo,
			queries: []string{"udp SRV " + srvPattern},
		},
		{
			name:    "additional section absent: A queries on the same server",
			setup:   func(f *fakeDNS) { f.records, f.hosts, f.noExtra = twoRecords, twoHosts, true },
			want:    wantTwo,
			queries: []string{"udp SRV " + srvPattern, "udp A b1.example.test.", "udp A b2.example.test."},
		},
		{
			name: "no additional, IPv6 only: A then AAAA",
			setup: func(f *fakeDNS) {
				f.records, f.noExtra = []string{"0 5 7003 b3.example.test."}, true
				f.hosts = map[string][]string{"b3.example.test": {"::1"}}
			},
			want:    []string{"[::1]:7003 weight=5 priority=0 sni=b3.example.test"},
			queries: []string{"udp SRV " + srvPattern, "udp A b3.example.test.", "udp AAAA b3.example.test."},
		},
		{
			name: "A and AAAA in the additional section: IPv4 wins",
			setup: func(f *fakeDNS) {
				f.records = []string{"1 1 7001 b1.example.test."}
				f.hosts = map[string][]string{"b1.example.test": {"::1", "127.0.0.11"}}
			},
			want:    []string{"127.0.0.11:7001 sni=b1.example.test"},
			queries: []string{"udp SRV " + srvPattern},
		},
		{
			name: "AAAA only in the additional section",
			setup: func(f *fakeDNS) {
				f.records = []string{"1 1 7001 b1.example.test."}
				f.hosts = map[string][]string{"b1.example.test": {"fd00::1"}}
			},
			want:    []string{"[fd00::1]:7001 sni=b1.example.test"},
			queries: []string{"udp SRV " + srvPattern},
		},
		{
			name: "several addresses: one backend each",
			setup: func(f *fakeDNS) {
				f.records = []string{"1 3 7001 b1.example.test."}
				f.hosts = map[string][]string{"b1.example.test": {"127.0.0.12", "127.0.0.11"}}
			},
			want: []string{"127.0.0.11:7001 weight=3 sni=b1.example.test", "127.0.0.12:7001 weight=3 sni=b1.example.test"},
		},
		{
			name: "target without an address is skipped",
			setup: func(f *fakeDNS) {
				f.records, f.hosts = append([]string{"1 10 7004 b4.example.test."}, twoRecords...), twoHosts
			},
			want: wantTwo,
			warn: []string{"b4.example.test", "A: no records, AAAA: no records"},
		},
		{
			name: "target whose lookups fail is skipped",
			setup: func(f *fakeDNS) {
				f.records, f.hosts, f.noExtra = []string{"1 1 7001 b1.example.test.", "1 1 7004 b4.example.test."}, twoHosts, true
				f.hosts = map[string][]string{"b1.example.test": {"127.0.0.11"}}
			},
			want: []string{"127.0.0.11:7001 sni=b1.example.test"},
			warn: []string{"b4.example.test", "no records"},
		},
		{
			name: "port 0 is skipped",
			setup: func(f *fakeDNS) {
				f.records, f.hosts = []string{"1 1 0 b1.example.test.", "1 1 7002 b2.example.test."}, twoHosts
			},
			want: []string{"127.0.0.12:7002 sni=b2.example.test"},
			warn: []string{"port 0", "b1.example.test"},
		},
		{
			name: "same address from two records: the better priority wins",
			setup: func(f *fakeDNS) {
				f.records = []string{"5 1 7001 b2.example.test.", "1 1 7001 b1.example.test."}
				f.hosts = map[string][]string{"b1.example.test": {"127.0.0.11"}, "b2.example.test": {"127.0.0.11"}}
			},
			want: []string{"127.0.0.11:7001 sni=b1.example.test"},
		},
		{
			name: "one target, two ports",
			setup: func(f *fakeDNS) {
				f.records, f.noExtra = []string{"1 1 7002 b1.example.test.", "1 1 7001 b1.example.test."}, true
				f.hosts = map[string][]string{"b1.example.test": {"127.0.0.11"}}
			},
			want:    []string{"127.0.0.11:7001 sni=b1.example.test", "127.0.0.11:7002 sni=b1.example.test"},
			queries: []string{"udp SRV " + srvPattern, "udp A b1.example.test."}, // looked up once
		},
		{
			name:  "service decidedly not available (target .)",
			setup: func(f *fakeDNS) { f.records = []string{"0 0 0 ."} },
			want:  []string{},
		},
		{
			name:    "tcp protocol",
			proto:   "tcp",
			setup:   func(f *fakeDNS) { f.records, f.hosts, f.noExtra = twoRecords, twoHosts, true },
			want:    wantTwo,
			queries: []string{"tcp SRV " + srvPattern, "tcp A b1.example.test.", "tcp A b2.example.test."},
		},
		{
			name:    "truncated UDP answer is asked again over TCP",
			setup:   func(f *fakeDNS) { f.records, f.hosts, f.truncateUDP = twoRecords, twoHosts, true },
			want:    wantTwo,
			queries: []string{"udp SRV " + srvPattern, "tcp SRV " + srvPattern},
		},
		{
			name:    "SERVFAIL",
			setup:   func(f *fakeDNS) { f.records, f.hosts, f.srvRcode = twoRecords, twoHosts, dns.RcodeServerFailure },
			wantErr: []string{"srv:", srvPattern, "SERVFAIL"},
		},
		{
			name:    "NXDOMAIN",
			setup:   func(f *fakeDNS) { f.srvRcode = dns.RcodeNameError },
			wantErr: []string{"srv:", srvPattern, "NXDOMAIN"},
		},
		{
			name:    "no records",
			setup:   func(f *fakeDNS) {},
			wantErr: []string{"srv:", srvPattern, "no SRV records"},
		},
		{
			name: "no target has an address",
			setup: func(f *fakeDNS) {
				f.records, f.addrRcode = []string{"1 1 7004 b4.example.test."}, dns.RcodeServerFailure
			},
			wantErr: []string{"srv:", "none of the 1 records gives a usable backend"},
			warn:    []string{"b4.example.test", "A: SERVFAIL, AAAA: SERVFAIL"},
		},
		{
			name:    "timeout",
			setup:   func(f *fakeDNS) { f.records, f.hosts, f.silent = twoRecords, twoHosts, true },
			wantErr: []string{"srv:", "SRV " + srvPattern, "deadline exceeded"},
		},
		{
			name: "timeout of an address lookup fails the fetch",
			setup: func(f *fakeDNS) {
				f.records, f.hosts, f.noExtra, f.silentAddr = twoRecords, twoHosts, true, true
			},
			wantErr: []string{"srv:", "address of target b1.example.test", "deadline exceeded"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeDNS(t)
			f.with(tt.setup)
			s, logs := newSRV(t, f.addr, tt.proto)
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			got, err := s.Fetch(ctx)
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("Fetch took %s with a 500ms deadline", took)
			}
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("Fetch = %q, want an error", backendLines(got))
				}
				for _, m := range tt.wantErr {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("error %q does not mention %q", err, m)
					}
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if got == nil || strings.Join(backendLines(got), "|") != strings.Join(tt.want, "|") {
					t.Fatalf("Fetch =\n%q\nwant\n%q", backendLines(got), tt.want)
				}
				for _, b := range got {
					if b.Host == "" || b.Port == "0" {
						t.Errorf("backend %+v has no host or port", b)
					}
				}
			}
			if tt.queries != nil {
				if q := f.log(); strings.Join(q, "|") != strings.Join(tt.queries, "|") {
					t.Errorf("queries %q, want %q", q, tt.queries)
				}
			}
			if tt.warn != nil && !srvHasWarning(logs, tt.warn...) {
				t.Errorf("no warning mentioning %q; logged: %v", tt.warn, logs.All())
			}
		})
	}
}

// srvHasWarning reports whether a warning was logged whose message and fields
// together contain every part.
func srvHasWarning(logs *observer.ObservedLogs, parts ...string) bool {
	for _, e := range logs.FilterLevelExact(zapcore.WarnLevel).All() {
		text := e.Message
		for k, v := range e.ContextMap() {
			text += fmt.Sprintf(" %s=%v", k, v)
		}
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(text, p)
		}
		if ok {
			return true
		}
	}
	return false
}

// A target that stays without an address is warned about once, not at every
// fetch; it is warned about again when it comes back and then loses it again.
func TestSRVSkipWarnsOnce(t *testing.T) {
	f := newFakeDNS(t)
	hosts := map[string][]string{"b1.example.test": {"127.0.0.11"}}
	f.set([]string{"1 1 7001 b1.example.test.", "1 1 7004 b4.example.test."}, hosts)
	s, logs := newSRV(t, f.addr, "")
	fetch := func() {
		t.Helper()
		if _, err := s.Fetch(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	warnings := func() int { return logs.FilterLevelExact(zapcore.WarnLevel).Len() }
	for range 3 {
		fetch()
	}
	if n := warnings(); n != 1 {
		t.Fatalf("%d warnings after 3 fetches with the same skipped target, want 1: %v", n, logs.All())
	}
	if n := logs.FilterLevelExact(zapcore.DebugLevel).FilterMessage("srv: skipping a target without an address").Len(); n != 2 {
		t.Fatalf("%d debug repeats, want 2", n)
	}
	f.set([]string{"1 1 7001 b1.example.test.", "1 1 7004 b4.example.test."},
		map[string][]string{"b1.example.test": {"127.0.0.11"}, "b4.example.test": {"127.0.0.14"}})
	fetch()
	f.set([]string{"1 1 7001 b1.example.test.", "1 1 7004 b4.example.test."}, hosts)
	fetch()
	if n := warnings(); n != 2 {
		t.Fatalf("%d warnings after the target lost its address again, want 2", n)
	}
}

// A cancelled context ends a fetch at once, even with no deadline.
func TestSRVFetchCancel(t *testing.T) {
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			f := newFakeDNS(t)
			f.with(func(f *fakeDNS) { f.silent = true })
			s, _ := newSRV(t, f.addr, proto)
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			start := time.Now()
			_, err := s.Fetch(ctx)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Fetch error %v, want context.Canceled", err)
			}
			if took := time.Since(start); took > time.Second {
				t.Fatalf("Fetch returned %s after the cancel", took-100*time.Millisecond)
			}
		})
	}
}

// A server that is not there (nothing listens on the port) is an error at
// once, not at the deadline.
func TestSRVFetchNoServer(t *testing.T) {
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			// a UDP port that was just closed; nothing listens on its TCP twin
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			pc.Close()
			s, _ := newSRV(t, pc.LocalAddr().String(), proto)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			start := time.Now()
			_, err = s.Fetch(ctx)
			if err == nil || !strings.Contains(err.Error(), "srv:") || !strings.Contains(err.Error(), "refused") {
				t.Fatalf("Fetch error %v, want a connection refused error", err)
			}
			if took := time.Since(start); took > time.Second {
				t.Fatalf("Fetch took %s to notice", took)
			}
		})
	}
}

// Through the Runner: records added, changed and removed between fetches reach
// Update; a failing server keeps the last list (no update) and reports errors.
func TestSRVWithRunner(t *testing.T) {
	f := newFakeDNS(t)
	hosts := map[string][]string{
		"b1.example.test": {"127.0.0.11"}, "b2.example.test": {"127.0.0.12"}, "b3.example.test": {"::1"},
	}
	f.set([]string{"1 1 7001 b1.example.test."}, hosts)
	s, _ := newSRV(t, f.addr, "")
	s.Interval = caddy.Duration(50 * time.Millisecond)
	s.Timeout = caddy.Duration(300 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	rec := newRecord()
	done := rec.run(t, ctx, s)
	defer func() {
		cancel()
		recv(t, done, 2*time.Second, "Run return")
	}()

	steps := []struct {
		what    string
		records []string
		want    []string
	}{
		{"first", []string{"1 1 7001 b1.example.test."}, []string{"127.0.0.11:7001 sni=b1.example.test"}},
		{"added", []string{"1 1 7001 b1.example.test.", "1 1 7002 b2.example.test."},
			[]string{"127.0.0.11:7001 sni=b1.example.test", "127.0.0.12:7002 sni=b2.example.test"}},
		{"weight and priority changed", []string{"1 1 7001 b1.example.test.", "2 9 7002 b2.example.test."},
			[]string{"127.0.0.11:7001 sni=b1.example.test", "127.0.0.12:7002 weight=9 priority=2 sni=b2.example.test"}},
		{"removed and added", []string{"2 9 7002 b2.example.test.", "3 1 7003 b3.example.test."},
			[]string{"127.0.0.12:7002 weight=9 priority=2 sni=b2.example.test", "[::1]:7003 priority=3 sni=b3.example.test"}},
	}
	for _, st := range steps {
		f.set(st.records, hosts)
		waitList(t, rec.updates, nil, strings.Join(st.want, " | "), 2*time.Second, st.what)
	}

	// The server fails: errors are reported, no update replaces the list.
	f.with(func(f *fakeDNS) { f.srvRcode = dns.RcodeServerFailure })
	deadline := time.After(2 * time.Second)
	for {
		select {
		case err := <-rec.errs:
			if !strings.Contains(err.Error(), "SERVFAIL") {
				t.Fatalf("error %v, want SERVFAIL", err)
			}
		case <-rec.updates:
			continue // an update from a fetch that began before the failure
		case <-deadline:
			t.Fatal("no error reported for a SERVFAIL")
		}
		break
	}
	for len(rec.updates) > 0 {
		<-rec.updates
	}
	nothing(t, rec.updates, 300*time.Millisecond, "update while the server fails")
	// and recovers
	f.with(func(f *fakeDNS) { f.srvRcode = dns.RcodeSuccess })
	waitList(t, rec.updates, nil, strings.Join(steps[len(steps)-1].want, " | "), 2*time.Second, "recovered")
}

func TestSRVValidate(t *testing.T) {
	ok := SRV{LookupServer: "127.0.0.1:53", LookupPattern: "_redis._tcp.example.com."}
	for _, tt := range []struct {
		name    string
		edit    func(s *SRV)
		mention string
	}{
		{"ok", func(*SRV) {}, ""},
		{"ok tcp, IPv6 server, no trailing dot", func(s *SRV) {
			s.DNSProtocol, s.LookupServer, s.LookupPattern = "tcp", "[::1]:5353", "_redis._tcp.example.com"
		}, ""},
		{"no server", func(s *SRV) { s.LookupServer = "" }, "srv_lookup_server"},
		{"server without port", func(s *SRV) { s.LookupServer = "127.0.0.1" }, "srv_lookup_server"},
		{"server with bad port", func(s *SRV) { s.LookupServer = "127.0.0.1:dns" }, "srv_lookup_server"},
		{"server with port 0", func(s *SRV) { s.LookupServer = "127.0.0.1:0" }, "srv_lookup_server"},
		{"no pattern", func(s *SRV) { s.LookupPattern = "" }, "srv_lookup_pattern"},
		{"bad pattern", func(s *SRV) { s.LookupPattern = "a..b" }, "srv_lookup_pattern"},
		{"root pattern", func(s *SRV) { s.LookupPattern = "." }, "srv_lookup_pattern"},
		{"bad protocol", func(s *SRV) { s.DNSProtocol = "tls" }, "srv_dns_protocol"},
		{"bad failpolicy", func(s *SRV) { s.FailPolicy = "never" }, "failpolicy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := ok
			tt.edit(&s)
			wantErrNaming(t, "Validate()", s.Validate(), tt.mention)
		})
	}
}

func TestSRVProvisionDefaults(t *testing.T) {
	s := &SRV{LookupServer: "127.0.0.1:53", LookupPattern: "_redis._tcp.example.com"}
	if err := s.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	if s.DNSProtocol != "udp" || s.name != "_redis._tcp.example.com." {
		t.Fatalf("provisioned protocol %q, name %q", s.DNSProtocol, s.name)
	}
	if s.Interval != 0 || s.FetchTimeout() != DefaultTimeout {
		t.Fatalf("interval %v, timeout %v: want gobetween's defaults 0 and 5s", s.Interval, s.FetchTimeout())
	}
}

func TestSRVJSON(t *testing.T) {
	var s SRV
	in := `{"srv_lookup_server":"127.0.0.1:53","srv_lookup_pattern":"_redis._tcp.example.com.","srv_dns_protocol":"tcp","interval":"10s","failpolicy":"setempty"}`
	if err := json.Unmarshal([]byte(in), &s); err != nil {
		t.Fatal(err)
	}
	if s.LookupServer != "127.0.0.1:53" || s.LookupPattern != "_redis._tcp.example.com." || s.DNSProtocol != "tcp" ||
		s.Interval != caddy.Duration(10*time.Second) || s.FailPolicy != "setempty" {
		t.Fatalf("unmarshalled %+v", s)
	}
}

// Caddyfile -> JSON, golden files in testdata/srv: NAME.caddyfile gives NAME.json.
func TestSRVCaddyfile(t *testing.T) {
	newSRV := func() caddyfile.Unmarshaler { return new(SRV) }
	goldenCaddyfile(t, "testdata/srv", newSRV)
	caddyfileErrors(t, newSRV, []struct{ name, input, mention string }{
		{"inline argument", "srv _redis._tcp.example.com.", "argument"},
		{"missing server", "srv {\n lookup_pattern _redis._tcp.example.com.\n}", "srv_lookup_server"},
		{"missing pattern", "srv {\n lookup_server 127.0.0.1:53\n}", "srv_lookup_pattern"},
		{"bad protocol", "srv {\n lookup_server 127.0.0.1:53\n lookup_pattern x.\n dns_protocol quic\n}", "srv_dns_protocol"},
		{"two values", "srv {\n lookup_server 127.0.0.1:53 127.0.0.2:53\n}", "argument"},
		{"no value", "srv {\n lookup_pattern\n}", "argument"},
		{"bad interval", "srv {\n lookup_server 127.0.0.1:53\n lookup_pattern x.\n interval often\n}", "interval"},
		{"unknown", "srv {\n lookup_server 127.0.0.1:53\n lookup_pattern x.\n resolver 1.1.1.1\n}", "resolver"},
	})
}
