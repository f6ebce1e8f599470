package e2e

// Real DNS through Between: two Debian dnsmasq backends answering the same
// name with different addresses (so the answer tells which backend served
// it), queried with dig and with github.com/miekg/dns.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func init() {
	exercises["udp-dns.caddyfile"] = exerciseUDPDNS
}

// dnsName is the name the test dnsmasq instances answer.
const dnsName = "test.example."

// dnsmasqA is a dnsmasq on 127.0.0.1 that answers A queries for dnsName
// (and anything under it) with one fixed address, and nothing else.
type dnsmasqA struct {
	addr   string
	cmd    *exec.Cmd
	exited chan struct{}
	out    lockedBuffer
}

// startDnsmasqA runs a dnsmasq answering dnsName with answer on a free
// loopback port; it is stopped (by its PID) when the test ends.
func startDnsmasqA(t testing.TB, answer string) *dnsmasqA {
	t.Helper()
	bin := needTool(t, "dnsmasq", "dnsmasq")
	var err error
	for range 5 { // a port taken between the probe and dnsmasq's bind: try another
		d := &dnsmasqA{addr: freeUDPAddr(t)}
		if err = d.start(bin, answer); err == nil {
			t.Cleanup(d.stop)
			return d
		}
		d.stop()
	}
	t.Fatal(err)
	return nil
}

func (d *dnsmasqA) start(bin, answer string) error {
	_, port, _ := net.SplitHostPort(d.addr)
	d.cmd = exec.Command(bin, "--no-daemon", "--port="+port, "--listen-address=127.0.0.1", "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=",
		"--address=/"+strings.TrimSuffix(dnsName, ".")+"/"+answer)
	d.cmd.Stdout, d.cmd.Stderr = &d.out, &d.out
	if err := d.cmd.Start(); err != nil {
		d.cmd = nil
		return err
	}
	d.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { cmd.Wait(); close(exited) }(d.cmd, d.exited)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			return fmt.Errorf("dnsmasq on %s exited: %s", d.addr, d.output())
		default:
		}
		if got, err := lookupA(d.addr, 200*time.Millisecond); err == nil && got == answer {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("dnsmasq on %s did not answer %s within 5s: %s", d.addr, dnsName, d.output())
}

func (d *dnsmasqA) output() string { return d.out.String() }

// stop ends this dnsmasq by its PID and waits for it.
func (d *dnsmasqA) stop() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

// lookupA asks server for the A record of dnsName over UDP and returns the
// first address.
func lookupA(server string, timeout time.Duration) (string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dnsName, dns.TypeA)
	c := &dns.Client{Timeout: timeout}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		return "", err
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String(), nil
		}
	}
	return "", fmt.Errorf("no A record in %s", dns.RcodeToString[r.Rcode])
}

// dig runs `dig @127.0.0.1 -p PORT test.example +short` (a new client socket
// each time) and returns its answer.
func dig(t testing.TB, bin, addr string) (string, error) {
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command(bin, "@"+host, "-p", port, strings.TrimSuffix(dnsName, "."), "A",
		"+short", "+tries=1", "+time=2").CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// pipelinedQueries sends n queries for dnsName from one UDP socket without
// waiting, then reads the replies (deadline 5 s) and returns how many
// distinct query IDs were answered and the answers by address.
func pipelinedQueries(t testing.TB, addr string, n int) (int, map[string]int) {
	t.Helper()
	c := dialUDP(t, addr)
	c.SetReadBuffer(1 << 20)
	for id := 1; id <= n; id++ {
		m := new(dns.Msg)
		m.SetQuestion(dnsName, dns.TypeA)
		m.Id = uint16(id)
		p, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	answered := map[uint16]bool{}
	byAddr := map[string]int{}
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(answered) < n {
		k, err := c.Read(buf)
		if err != nil {
			break
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:k]); err != nil {
			t.Errorf("reply is no DNS message: %v", err)
			continue
		}
		if r.Id < 1 || int(r.Id) > n || answered[r.Id] {
			t.Errorf("reply with unexpected or repeated id %d", r.Id)
			continue
		}
		answered[r.Id] = true
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				byAddr[a.A.String()]++
			}
		}
	}
	return len(answered), byAddr
}

func TestUDPDNS(t *testing.T) {
	digBin := needTool(t, "dig", "bind9-dnsutils")
	d1, d2 := startDnsmasqA(t, "10.0.0.1"), startDnsmasqA(t, "10.0.0.2")
	for _, kind := range udpKinds {
		t.Run(kind.name, func(t *testing.T) {
			addr := freeUDPAddr(t)
			c := startUDP(t, "dns", udpServer(kind.prefix+addr, map[string]any{"max_responses": 1},
				map[string]any{"client_idle_timeout": "30s"}, d1.addr, d2.addr))
			testDNSThrough(t, c, digBin, addr, "dns")
		})
	}
}

// testDNSThrough checks a DNS load balancer on addr over the two dnsmasq
// backends (10.0.0.1, 10.0.0.2): dig from 10 clients in turn gets both
// answers in turn (round robin), and 100 back-to-back queries from one
// socket all get their answer (max_responses 1: a new virtual session per
// query, none lost).
func testDNSThrough(t *testing.T, c *instance, digBin, addr, server string) {
	t.Helper()
	var first string
	waitFor(t, 5*time.Second, "a first dig answer through Between", func() bool {
		a, err := dig(t, digBin, addr)
		first = a
		return err == nil && a != ""
	})
	count := map[string]int{first: 1}
	var seq []string
	for range 10 {
		a, err := dig(t, digBin, addr)
		if err != nil {
			t.Fatalf("dig through Between: %v: %s", err, a)
		}
		count[a]++
		seq = append(seq, a)
	}
	if count["10.0.0.1"]+count["10.0.0.2"] != 11 {
		t.Errorf("dig answers %v, want only 10.0.0.1 and 10.0.0.2", count)
	}
	for i := 1; i < len(seq); i++ {
		if seq[i] == seq[i-1] {
			t.Errorf("dig from 10 clients in turn: %v, want the two backends alternating (round robin)", seq)
			break
		}
	}
	t.Logf("dig from 11 clients: %v", count)

	const n = 100
	h0, l0 := udpDrops(c.scrape(t), server, "")
	got, byAddr := pipelinedQueries(t, addr, n)
	h1, l1 := udpDrops(c.scrape(t), server, "")
	t.Logf("%d back-to-back queries from one socket: %d answered (%v), %d lost; drops counted by Between: handler %g, listener %g",
		n, got, byAddr, n-got, h1-h0, l1-l0)
	if got != n {
		t.Errorf("max_responses 1: %d of %d back-to-back queries from one socket lost", n-got, n)
	}
	if h1 != h0 || l1 != l0 {
		t.Errorf("Between dropped datagrams: handler %g, listener %g", h1-h0, l1-l0)
	}
	c.waitSessions(t, server, 0, 5*time.Second)
}

// exerciseUDPDNS runs examples/udp-dns.caddyfile against two dnsmasq
// backends in place of the example's 127.0.0.1:5301 and :5302.
func exerciseUDPDNS(t *testing.T, path string) {
	digBin := needTool(t, "dig", "bind9-dnsutils")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d1, d2 := startDnsmasqA(t, "10.0.0.1"), startDnsmasqA(t, "10.0.0.2")
	addr := freeUDPAddr(t)
	text := string(orig)
	for from, to := range map[string]string{"127.0.0.1:5353": addr, "127.0.0.1:5301": d1.addr, "127.0.0.1:5302": d2.addr} {
		if !strings.Contains(text, from) {
			t.Fatalf("the example has no %s", from)
		}
		text = strings.ReplaceAll(text, from, to)
	}
	text = strings.Replace(text, "{\n", "{\n\tadmin ADMIN\n", 1)
	c := startCaddyfile(t, text)
	testDNSThrough(t, c, digBin, addr, "dns")
}
