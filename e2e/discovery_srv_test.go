package e2e

import (
	"fmt"
	"net"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const srvE2EPattern = "_svc._tcp.example.test."

// srvTarget is one SRV record of the test zone and the address of its target.
type srvTarget struct {
	name             string // target without the domain, e.g. "b1"
	port             string
	priority, weight int
}

// dnsmasqServer is a Debian dnsmasq answering the test zone on a loopback
// port (UDP and TCP). dnsmasq reads --srv-host and --host-record only at
// start (SIGHUP rereads hosts files, not SRV records), so a zone change is a
// restart with new flags on the same port.
type dnsmasqServer struct {
	t    *testing.T
	bin  string
	addr string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited and been reaped
	out    strings.Builder
}

func startDnsmasq(t *testing.T, zone []srvTarget) *dnsmasqServer {
	t.Helper()
	d := &dnsmasqServer{t: t, bin: needTool(t, "dnsmasq", "dnsmasq")}
	t.Cleanup(d.stop)
	var err error
	for range 5 { // a port taken between the probe and dnsmasq's bind: try another
		d.addr = freeAddr(t)
		if err = d.start(zone); err == nil {
			return d
		}
	}
	t.Fatal(err)
	return nil
}

// args are dnsmasq's flags serving zone: SRV records for srvE2EPattern, every
// target at 127.0.0.1, and NXDOMAIN for any other name in example.test.
func (d *dnsmasqServer) args(zone []srvTarget) []string {
	_, port, _ := net.SplitHostPort(d.addr)
	args := []string{
		"--no-daemon", "--port=" + port, "--listen-address=127.0.0.1", "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--local=/example.test/",
		"--pid-file=",
	}
	hosts := map[string]bool{}
	for _, z := range zone {
		args = append(args, fmt.Sprintf("--srv-host=%s,%s.example.test,%s,%d,%d",
			strings.TrimSuffix(srvE2EPattern, "."), z.name, z.port, z.priority, z.weight))
		if !hosts[z.name] {
			hosts[z.name] = true
			args = append(args, fmt.Sprintf("--host-record=%s.example.test,127.0.0.1", z.name))
		}
	}
	return args
}

// start runs dnsmasq with zone and waits until it answers with it.
func (d *dnsmasqServer) start(zone []srvTarget) error {
	d.mu.Lock()
	d.out.Reset()
	cmd := exec.Command(d.bin, d.args(zone)...)
	cmd.Stdout, cmd.Stderr = &dnsmasqOutput{&d.mu, &d.out}, &dnsmasqOutput{&d.mu, &d.out}
	if err := cmd.Start(); err != nil {
		d.mu.Unlock()
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	d.cmd, d.exited = cmd, exited
	d.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("dnsmasq on %s exited: %s", d.addr, d.output())
		default:
		}
		if n, err := srvCount(d.addr); err == nil && n == len(zone) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("dnsmasq on %s did not answer with %d SRV records within 5s: %s", d.addr, len(zone), d.output())
}

func (d *dnsmasqServer) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

// stop ends the dnsmasq this test started (by its PID) and waits until it
// has exited, so that its port is free again.
func (d *dnsmasqServer) stop() {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.cmd = nil
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// restart serves a new zone; it returns when the new dnsmasq answers with it.
func (d *dnsmasqServer) restart(zone []srvTarget) time.Time {
	d.t.Helper()
	d.stop()
	if err := d.start(zone); err != nil {
		d.t.Fatal(err)
	}
	return time.Now()
}

type dnsmasqOutput struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w *dnsmasqOutput) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// srvCount asks addr for the SRV records of the test pattern.
func srvCount(addr string) (int, error) {
	m := new(dns.Msg)
	m.SetQuestion(srvE2EPattern, dns.TypeSRV)
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		return 0, err
	}
	if r.Rcode != dns.RcodeSuccess {
		return 0, fmt.Errorf("%s", dns.RcodeToString[r.Rcode])
	}
	return len(r.Answer), nil
}

// srvBackendAttrs returns "weight=W priority=P sni=S" per backend address, as
// the admin API's stats report them.
func srvBackendAttrs(t *testing.T, c *instance, server string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, b := range statsBackends(t, c, server) {
		out[net.JoinHostPort(b.Host, b.Port)] = fmt.Sprintf("weight=%d priority=%d sni=%s", b.Weight, b.Priority, b.SNI)
	}
	return out
}

func srvAttrsString(m map[string]string) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+" "+m[k])
	}
	return strings.Join(parts, "; ")
}

// TestDiscoverySRV runs the real binary with an srv source (interval 1s)
// against dnsmasq: backends appear, change priority and weight, and
// disappear, and traffic through the between handler follows each change;
// the propagation delay of each is logged. With dnsmasq stopped the last
// good list keeps serving and the failure is logged.
func TestDiscoverySRV(t *testing.T) {
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) { testDiscoverySRV(t, proto) })
	}
}

func testDiscoverySRV(t *testing.T, proto string) {
	b1, b2 := nameBackend(t, "b1"), nameBackend(t, "b2")
	_, p1, _ := net.SplitHostPort(b1.addr)
	_, p2, _ := net.SplitHostPort(b2.addr)
	dnsd := startDnsmasq(t, []srvTarget{{"b1", p1, 1, 1}})

	listen := freeAddr(t)
	name := "srv-" + proto
	c := startCaddy(t, between(map[string]any{name: map[string]any{
		"listen": []string{shared(listen)},
		"discovery": map[string]any{
			"kind":               "srv",
			"srv_lookup_server":  dnsd.addr,
			"srv_lookup_pattern": srvE2EPattern,
			"srv_dns_protocol":   proto,
			"interval":           "1s",
			"timeout":            "1s",
		},
	}}))

	answers := func(want string) func() bool {
		return func() bool { got, err := ask(listen); return err == nil && got == want }
	}
	attrs := func(want map[string]string) func() bool {
		return func() bool { return srvAttrsString(srvBackendAttrs(t, c, name)) == srvAttrsString(want) }
	}
	a1, a2 := "127.0.0.1:"+p1, "127.0.0.1:"+p2
	waitFor(t, 10*time.Second, "first backend from DNS serving", answers("b1"))
	waitFor(t, 2*time.Second, "stats of the first list", attrs(map[string]string{
		a1: "weight=1 priority=1 sni=b1.example.test",
	}))

	// propagation: from the moment dnsmasq answers with the new records to the
	// first connection that reaches the expected backend. Each change lands
	// just after a fetch (the previous wait ended on one), so the delays are
	// near the worst case: one interval plus one fetch.
	measure := func(what string, zone []srvTarget, want string) time.Duration {
		t.Helper()
		changed := dnsd.restart(zone)
		waitFor(t, 5*time.Second, what, answers(want))
		d := time.Since(changed)
		t.Logf("srv (%s, interval 1s): %s: propagation delay %s", proto, what, d.Round(time.Millisecond))
		if d > 3*time.Second {
			t.Errorf("%s took %s with interval 1s", what, d)
		}
		return d
	}

	// appear: b2 with a better priority (0) takes every new connection
	measure("backend appears", []srvTarget{{"b1", p1, 1, 1}, {"b2", p2, 0, 1}}, "b2")
	waitFor(t, 2*time.Second, "stats after the appearance", attrs(map[string]string{
		a1: "weight=1 priority=1 sni=b1.example.test",
		a2: "weight=1 priority=0 sni=b2.example.test",
	}))

	// change: b2's priority drops to 5, b1's weight becomes 7: b1 serves
	measure("priority and weight change", []srvTarget{{"b1", p1, 1, 7}, {"b2", p2, 5, 3}}, "b1")
	waitFor(t, 2*time.Second, "stats after the change", attrs(map[string]string{
		a1: "weight=7 priority=1 sni=b1.example.test",
		a2: "weight=3 priority=5 sni=b2.example.test",
	}))

	// disappear: b1 leaves; b2, alone, serves
	measure("backend disappears", []srvTarget{{"b2", p2, 5, 3}}, "b2")
	waitFor(t, 2*time.Second, "stats after the removal", attrs(map[string]string{
		a2: "weight=3 priority=5 sni=b2.example.test",
	}))
	before := b1.count()
	for i := range 20 {
		if got, err := ask(listen); err != nil || got != "b2" {
			t.Fatalf("connection %d after b1 left: %q, %v", i, got, err)
		}
	}
	if n := b1.count(); n != before {
		t.Fatalf("b1 got %d connections after it left DNS", n-before)
	}

	// dnsmasq stops: the error is logged, the last good list keeps serving
	stopped := time.Now()
	dnsd.stop()
	waitFor(t, 5*time.Second, "a logged srv discovery error", func() bool {
		return strings.HasPrefix(loggedDiscoveryError(c.logs(), "", "srv: ", srvE2EPattern), "srv: ")
	})
	t.Logf("srv (%s): failure logged %s after dnsmasq stopped", proto, time.Since(stopped).Round(time.Millisecond))
	// keep asking across several failed fetches (interval 1s)
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); {
		if got, err := ask(listen); err != nil || got != "b2" {
			t.Fatalf("with dnsmasq stopped: %q, %v; want the last good list (b2)", got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := srvAttrsString(srvBackendAttrs(t, c, name)); got != a2+" weight=3 priority=5 sni=b2.example.test" {
		t.Fatalf("backends with dnsmasq stopped: %s", got)
	}
}

// A Caddyfile with the srv source: the kind prefix is dropped from the fields.
func TestDiscoverySRVCaddyfile(t *testing.T) {
	b1 := nameBackend(t, "b1")
	_, p1, _ := net.SplitHostPort(b1.addr)
	dnsd := startDnsmasq(t, []srvTarget{{"b1", p1, 0, 5}})
	listen := freeAddr(t)
	c := startCaddyfile(t, `{
	admin ADMIN
	layer4 {
		between+tcp/`+listen+` {
			route {
				between srvcf {
					discovery srv {
						lookup_server `+dnsd.addr+`
						lookup_pattern `+srvE2EPattern+`
						dns_protocol udp
						interval 1s
					}
				}
			}
		}
	}
}
`)
	waitFor(t, 10*time.Second, "b1 through the Caddyfile config", func() bool {
		got, err := ask(listen)
		return err == nil && got == "b1"
	})
	if got := srvAttrsString(srvBackendAttrs(t, c, "srvcf")); got != "127.0.0.1:"+p1+" weight=5 priority=0 sni=b1.example.test" {
		t.Fatalf("backends: %s", got)
	}
}
