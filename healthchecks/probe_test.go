package healthchecks

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
)

// tcpPeer serves every connection with handle until the test ends.
func tcpPeer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				handle(c)
			}()
		}
	}()
	return l.Addr().String()
}

// udpEcho answers every datagram with prefix + the datagram.
func udpEcho(t *testing.T, prefix string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte(prefix), buf[:n]...), from)
		}
	}()
	return pc.LocalAddr().String()
}

// closedPort returns an address nobody listens on (TCP and UDP).
func closedPort(t *testing.T) string {
	return "127.0.0.1:" + strconv.Itoa(freePort(t, true))
}

func TestPingCheck(t *testing.T) {
	open := tcpPeer(t, func(net.Conn) {})
	tests := []struct {
		name, addr string
		wantErr    string
	}{
		{"listening", open, ""},
		{"refused", closedPort(t), "connection refused"},
	}
	p := mustLoad(t, "ping", `{"interval":"1s"}`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			err := p.Check(ctx, backendAt(t, tt.addr))
			checkErr(t, err, tt.wantErr)
		})
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q, want one containing %q", err, want)
	}
}

func TestProbeCheck(t *testing.T) {
	redisLike := tcpPeer(t, func(c net.Conn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		switch line {
		case "PING\r\n":
			io.WriteString(c, "+PONG\r\n")
		case "\x00\x01\xff\r\n":
			io.WriteString(c, "\x00\x01\xffok")
		default:
			io.WriteString(c, "-ERR unknown command\r\n")
		}
	})
	hold := func(c net.Conn) { io.Copy(io.Discard, c) } // until the prober hangs up
	banner := tcpPeer(t, func(c net.Conn) { io.WriteString(c, "220 mail.test ESMTP ready\r\n"); hold(c) })
	short := tcpPeer(t, func(c net.Conn) { io.WriteString(c, "+PO") })
	chatty := tcpPeer(t, func(c net.Conn) { io.WriteString(c, strings.Repeat("x", 100)); hold(c) })
	silent := tcpPeer(t, hold)
	tlsPeer := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "sni=%s", r.TLS.ServerName)
	}))
	defer tlsPeer.Close()
	tlsAddr := strings.TrimPrefix(tlsPeer.URL, "https://")
	echo := udpEcho(t, "re:")

	tests := []struct {
		name, addr, sni, config, wantErr string
	}{
		{"connect only", banner, "", `{}`, ""},
		{"connect refused", closedPort(t), "", `{}`, "connection refused"},
		{"starts_with", redisLike, "", `{"probe_send":"PING\\r\\n","probe_recv":"+PONG"}`, ""},
		{"starts_with exact length", redisLike, "", `{"probe_send":"PING\\r\\n","probe_recv":"+PONG\\r\\n"}`, ""},
		{"starts_with mismatch", redisLike, "", `{"probe_send":"HELLO\\r\\n","probe_recv":"+PONG"}`, `does not start with "+PONG"`},
		{"binary escapes", redisLike, "", `{"probe_send":"\\x00\\x01\\xff\\r\\n","probe_recv":"\\x00\\001\\xffok"}`, ""},
		{"closed too early", short, "", `{"probe_recv":"+PONG"}`, `connection closed after "+PO"`},
		{"regexp", banner, "", `{"probe_strategy":"regexp","probe_recv":"^220 \\S+ ESMTP"}`, ""},
		{"regexp no match within recv_len", chatty, "", `{"probe_strategy":"regexp","probe_recv":"y","probe_recv_len":10}`, "probe_recv_len 10 bytes"},
		{"regexp closed", short, "", `{"probe_strategy":"regexp","probe_recv":"PONG"}`, "(closed) does not match"},
		{"regexp silent peer times out", silent, "", `{"probe_strategy":"regexp","probe_recv":"."}`, "timeout"},
		{"tls to an IP sends no SNI", tlsAddr, "", `{"probe_protocol":"tls","probe_send":"GET / HTTP/1.0\r\n\r\n","probe_strategy":"regexp","probe_recv":"(?s)^HTTP/1.0 200 .*sni=$"}`, ""},
		{"tls uses the backend sni", tlsAddr, "api.test", `{"probe_protocol":"tls","probe_send":"GET / HTTP/1.0\r\n\r\n","probe_strategy":"regexp","probe_recv":"sni=api.test$"}`, ""},
		{"tls against plain tcp", banner, "", `{"probe_protocol":"tls"}`, "tls"},
		{"udp starts_with", echo, "", `{"probe_protocol":"udp","probe_send":"hi\\x00","probe_recv":"re:hi\\x00"}`, ""},
		{"udp regexp", echo, "", `{"probe_protocol":"udp","probe_send":"hello","probe_strategy":"regexp","probe_recv":"^re:h.l+o$"}`, ""},
		{"udp mismatch", echo, "", `{"probe_protocol":"udp","probe_send":"hello","probe_recv":"nope"}`, "does not start with"},
		{"udp refused", closedPort(t), "", `{"probe_protocol":"udp","probe_send":"hello","probe_recv":"x"}`, "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := `{"interval":"1s",` + strings.TrimPrefix(tt.config, "{")
			if tt.config == `{}` {
				cfg = `{"interval":"1s"}`
			}
			p := mustLoad(t, "probe", cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			b := backendAt(t, tt.addr)
			b.SNI = tt.sni
			checkErr(t, p.Check(ctx, b), tt.wantErr)
		})
	}
}

// TestProbeRedis runs the probe against a real redis-server through the
// Scheduler: down after `fails` failed checks when redis stops, up after
// `passes` when it is back.
func TestProbeRedis(t *testing.T) {
	redis := needBinary(t, "redis-server")
	port := strconv.Itoa(freePort(t, false))
	hostport := "127.0.0.1:" + port
	start := func() func() {
		stop := startProcess(t, redis, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning")
		waitFor(t, 10*time.Second, "redis-server to listen", func() bool { return dialable(hostport) })
		return stop
	}
	stop := start()

	const interval, fails, passes = 100 * time.Millisecond, 3, 2
	cfg := fmt.Sprintf(`{"interval":"%s","timeout":"200ms","fails":%d,"passes":%d,"probe_send":"PING\\r\\n","probe_recv":"+PONG"}`, interval, fails, passes)
	p := mustLoad(t, "probe", cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := p.Check(ctx, backendAt(t, hostport)); err != nil {
		t.Fatalf("probe against running redis: %v", err)
	}
	wrong := mustLoad(t, "probe", `{"interval":"1s","probe_send":"PING\r\n","probe_recv":"+PANG"}`)
	if err := wrong.Check(ctx, backendAt(t, hostport)); err == nil || !strings.Contains(err.Error(), `"+PONG"`) {
		t.Fatalf("probe expecting +PANG: %v", err)
	}

	rec := newRecorder(nil)
	s := NewScheduler(p, nil, rec.onChange)
	defer s.Stop()
	s.Update([]*backend.Backend{backendAt(t, hostport)})
	rec.none(t, 3*interval)

	// Worst case: the failure starts just after a check, so the first failing
	// check comes up to an interval (+5%, + the phase offset) later and
	// fails-1 more intervals follow; at least fails-1 intervals (-5%) pass.
	bounds := func(n int) (lo, hi time.Duration) {
		return time.Duration(n-1) * interval * 95 / 100, time.Duration(n)*interval*105/100 + interval/10 + 300*time.Millisecond
	}
	stop()
	stopped := time.Now()
	ev := rec.next(t, 5*time.Second)
	took := time.Since(stopped)
	if ev.healthy || !strings.Contains(ev.reason, fmt.Sprintf("%d consecutive failures", fails)) || !strings.Contains(ev.reason, "refused") {
		t.Fatalf("transition %+v, want down after %d failures", ev, fails)
	}
	if lo, hi := bounds(fails); took < lo || took > hi {
		t.Fatalf("down %s after redis stopped, want %s-%s", took, lo, hi)
	}
	t.Logf("redis stopped: down after %s (%s)", took, ev.reason)

	start()
	started := time.Now()
	ev = rec.next(t, 5*time.Second)
	took = time.Since(started)
	if !ev.healthy || !strings.Contains(ev.reason, fmt.Sprintf("%d consecutive passes", passes)) {
		t.Fatalf("transition %+v, want up after %d passes", ev, passes)
	}
	if lo, hi := bounds(passes); took < lo || took > hi {
		t.Fatalf("up %s after redis restarted, want %s-%s", took, lo, hi)
	}
	t.Logf("redis restarted: up after %s (%s)", took, ev.reason)
	rec.none(t, 3*interval)
}

// dnsQuery is a DNS query for example.test A with transaction ID 0xBEEF,
// written with Go escapes as probe_send takes it.
const dnsQuery = `\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x04test\x00\x00\x01\x00\x01`

// TestProbeDNSMasq sends a DNS query over UDP to a real dnsmasq.
func TestProbeDNSMasq(t *testing.T) {
	dnsmasq := needBinary(t, "dnsmasq")
	port := strconv.Itoa(freePort(t, true))
	hostport := "127.0.0.1:" + port
	startProcess(t, dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--port="+port,
		"--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
		"--address=/example.test/127.0.0.9", "--pid-file=", "--user=root", "--log-facility=-")
	waitFor(t, 10*time.Second, "dnsmasq to listen", func() bool { return dialable(hostport) }) // it serves TCP too

	q, err := json.Marshal(dnsQuery)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, config, wantErr string
	}{
		// ID 0xBEEF, flags 0x8580 (response, authoritative, recursion desired+available), 1 question, 1 answer.
		{"starts_with id and flags", `"probe_recv":"\\xbe\\xef\\x85\\x80\\x00\\x01\\x00\\x01"`, ""},
		// The answer's address 127.0.0.9 ends the reply.
		{"regexp answer", `"probe_strategy":"regexp","probe_recv":"\\x7f\\x00\\x00\\x09$"`, ""},
		{"wrong id", `"probe_recv":"\\xbe\\xee"`, "does not start with"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustLoad(t, "probe", `{"interval":"1s","probe_protocol":"udp","probe_send":`+string(q)+`,`+tt.config+`}`)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			checkErr(t, p.Check(ctx, backendAt(t, hostport)), tt.wantErr)
		})
	}
}
