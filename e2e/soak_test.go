package e2e

// Soak: TCP and UDP load through one caddy for a while (2 minutes by
// default, BETWEEN_SOAK=30m for the long run) while backends are killed and
// revived, discovery adds and removes backends, health checks flap and the
// config reloads every 10 s. Every TCP stream is random bytes checked end to
// end against the same generator, and every backend names itself first, so a
// failure can be pinned on the backend that served the connection: only a
// connection whose backend was killed may fail. After the load, goroutines,
// fds and RSS must come back to the baseline.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// soakEnv overrides the soak's load time (a Go duration, e.g. 30m); set, it
// also selects the long variants of the fault tests (as BETWEEN_LONG does).
const soakEnv = "BETWEEN_SOAK"

func soakDuration(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv(soakEnv)
	if v == "" {
		return 2 * time.Minute
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive Go duration such as 30m", soakEnv, v)
	}
	return d
}

// longRun reports whether the long variants were asked for
// (BETWEEN_SOAK or BETWEEN_LONG set).
func longRun() bool { return os.Getenv(soakEnv) != "" || os.Getenv("BETWEEN_LONG") != "" }

const (
	soakTCPBackends = 5
	soakUDPBackends = 3
	soakTCPWorkers  = 8
	soakUDPWorkers  = 4
	soakReloadEvery = 10 * time.Second
	soakChaosEvery  = time.Second
	// "NN EEEEEEEE\n": the backend's id and its kill count when it took the
	// connection, first on every connection
	soakHeaderLen = 12
	soakChunk     = 16 << 10
	// an RSS back within this of the baseline counts as back (the Go heap
	// keeps what it grew to for a while and returns it to the OS lazily)
	soakRSSSlackKiB = 64 << 10
)

// soakBackend is a TCP echo backend on its own loopback address
// 127.77.X.(id+1) that names itself ("NN EEEEEEEE\n") on every connection before
// echoing, with a health side port (the same port on every backend's
// address) that the test opens and closes to flap its active health.
type soakBackend struct {
	id         int
	addr       string // data address
	healthAddr string

	mu    sync.Mutex
	ln    net.Listener
	hln   net.Listener
	conns map[net.Conn]struct{}
	alive bool
	kills atomic.Int64 // bumped on every kill
	wg    sync.WaitGroup
}

func (b *soakBackend) healthPort() int {
	return b.hln.Addr().(*net.TCPAddr).Port
}

func (b *soakBackend) serve(ln net.Listener) {
	defer b.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		if !b.alive {
			b.mu.Unlock()
			c.Close()
			continue
		}
		b.conns[c] = struct{}{}
		// a kill after this point closes c and bumps kills past epoch
		epoch := b.kills.Load()
		b.wg.Add(1)
		b.mu.Unlock()
		go func() {
			defer b.wg.Done()
			defer func() {
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
				c.Close()
			}()
			if _, err := fmt.Fprintf(c, "%02d %08d\n", b.id, epoch); err != nil {
				return
			}
			io.Copy(c, c)
			c.(*net.TCPConn).CloseWrite()
		}()
	}
}

func (b *soakBackend) serveHealth(ln net.Listener) {
	defer b.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// listenRetry binds addr, retrying briefly (a port just closed may be in use
// by a connection in the kernel's way for a moment).
func listenRetry(addr string) (net.Listener, error) {
	var err error
	for range 50 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, err
}

func (b *soakBackend) kill() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.alive {
		return
	}
	b.alive = false
	b.kills.Add(1)
	b.ln.Close()
	for c := range b.conns {
		c.Close()
	}
}

func (b *soakBackend) revive() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.alive {
		return nil
	}
	ln, err := listenRetry(b.addr)
	if err != nil {
		return err
	}
	b.ln, b.alive = ln, true
	b.wg.Add(1)
	go b.serve(ln)
	return nil
}

// setHealthy opens or closes the health side port.
func (b *soakBackend) setHealthy(up bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if up == (b.hln != nil) {
		return nil
	}
	if !up {
		b.hln.Close()
		b.hln = nil
		return nil
	}
	ln, err := listenRetry(b.healthAddr)
	if err != nil {
		return err
	}
	b.hln = ln
	b.wg.Add(1)
	go b.serveHealth(ln)
	return nil
}

func (b *soakBackend) close() {
	b.kill()
	b.setHealthy(false)
	b.wg.Wait()
}

// newSoakBackends starts n backends on 127.77.X.1..n with one common health
// port.
func newSoakBackends(t *testing.T, n int) []*soakBackend {
	t.Helper()
	for try := 0; try < 20; try++ {
		net3 := fmt.Sprintf("127.77.%d.", rand.IntN(250)+1)
		first, err := net.Listen("tcp", net3+"1:0")
		if err != nil {
			continue
		}
		_, hport, _ := net.SplitHostPort(first.Addr().String())
		first.Close()
		var bs []*soakBackend
		ok := true
		for i := range n {
			host := fmt.Sprintf("%s%d", net3, i+1)
			b := &soakBackend{id: i, healthAddr: net.JoinHostPort(host, hport), conns: map[net.Conn]struct{}{}}
			ln, err := net.Listen("tcp", host+":0")
			if err != nil {
				ok = false
				break
			}
			b.ln, b.addr, b.alive = ln, ln.Addr().String(), true
			b.wg.Add(1)
			go b.serve(ln)
			bs = append(bs, b)
			if err := b.setHealthy(true); err != nil {
				ok = false
				break
			}
		}
		if !ok {
			for _, b := range bs {
				b.close()
			}
			continue
		}
		t.Cleanup(func() {
			for _, b := range bs {
				b.close()
			}
		})
		return bs
	}
	t.Fatal("no free 127.77.X.0/24 with a common free health port after 20 tries")
	return nil
}

// soakUDPBackend is a UDP echo the test kills (closes) and revives on the
// same address.
type soakUDPBackend struct {
	addr string
	mu   sync.Mutex
	pc   *net.UDPConn
	wg   sync.WaitGroup
}

func (u *soakUDPBackend) serve(pc *net.UDPConn) {
	defer u.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		pc.WriteToUDPAddrPort(buf[:n], from)
	}
}

func (u *soakUDPBackend) kill() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.pc != nil {
		u.pc.Close()
		u.pc = nil
	}
}

func (u *soakUDPBackend) revive() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.pc != nil {
		return nil
	}
	a, err := net.ResolveUDPAddr("udp", u.addr)
	if err != nil {
		return err
	}
	for range 50 {
		if u.pc, err = net.ListenUDP("udp", a); err == nil {
			u.pc.SetReadBuffer(1 << 20)
			u.wg.Add(1)
			go u.serve(u.pc)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// newSoakUDPBackend starts a UDP echo on host (an address of its own: the
// proxy's ephemeral sockets on 127.0.0.1 cannot take its port while it is
// dead).
func newSoakUDPBackend(t *testing.T, host string) *soakUDPBackend {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(host)})
	if err != nil {
		t.Fatal(err)
	}
	u := &soakUDPBackend{addr: pc.LocalAddr().String()}
	pc.Close()
	if err := u.revive(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.kill(); u.wg.Wait() })
	return u
}

// outages records when backends were down (killed), so that a failure
// nobody can pin on a backend (no answer at all) is excused only when it
// overlaps an outage.
type outages struct {
	mu   sync.Mutex
	down map[int]time.Time // backend -> killed at (still down)
	past [][2]time.Time
}

func (o *outages) killed(id int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.down == nil {
		o.down = map[int]time.Time{}
	}
	if _, ok := o.down[id]; !ok {
		o.down[id] = time.Now()
	}
}

func (o *outages) revived(id int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if at, ok := o.down[id]; ok {
		o.past = append(o.past, [2]time.Time{at, time.Now()})
		delete(o.down, id)
	}
}

// overlaps reports whether some backend was down at some moment of [from, to]
// (widened by slack for the proxy's own view of a dead backend: a dead
// backend stays elected until health or passive health notices it).
func (o *outages) overlaps(from, to time.Time, slack time.Duration) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.down) > 0 {
		return true
	}
	for _, p := range o.past {
		if p[0].Before(to) && p[1].Add(slack).After(from) {
			return true
		}
	}
	return false
}

// soakTally counts results by kind; excused failures are those pinned on a
// killed backend, the others fail the test.
type soakTally struct {
	mu        sync.Mutex
	conns     int
	bytes     int64
	datagrams int
	excused   map[string]int
	failed    map[string]int
	first     []string
	perBE     map[int]int
}

func (s *soakTally) fail(excused bool, kind string, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if excused {
		s.excused[kind]++
		return
	}
	s.failed[kind]++
	if len(s.first) < 10 {
		s.first = append(s.first, kind+": "+fmt.Sprintf(format, args...))
	}
}

func countsString(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var l []string
	for k, v := range m {
		l = append(l, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(l)
	return strings.Join(l, " ")
}

// soakDiscovery is the json discovery endpoint: the listed TCP backends.
type soakDiscovery struct {
	mu     sync.Mutex
	listed map[int]bool
	bs     []*soakBackend
	hits   atomic.Int64
}

func (d *soakDiscovery) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.hits.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	list := []map[string]any{}
	for _, b := range d.bs {
		if d.listed[b.id] {
			host, port, _ := net.SplitHostPort(b.addr)
			list = append(list, map[string]any{"host": host, "port": port})
		}
	}
	json.NewEncoder(w).Encode(list)
}

func (d *soakDiscovery) set(id int, listed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.listed[id] = listed
}

func newSoakDiscovery(t *testing.T, bs []*soakBackend) (*soakDiscovery, string) {
	d := &soakDiscovery{listed: map[int]bool{}, bs: bs}
	for _, b := range bs {
		d.listed[b.id] = true
	}
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	return d, srv.URL + "/backends"
}

// soakApps is the soak's config; variant 1 differs slightly from variant 0
// in both handlers (a reload to it changes them, one back restores them).
func soakApps(tcpListen, udpListen, discoveryURL string, healthPort int, udpBackends []string, variant int) string {
	return layer4(map[string]any{
		"soaktcp": map[string]any{
			"listen": []string{"between+tcp/" + tcpListen},
			"routes": []any{map[string]any{"handle": []any{map[string]any{
				"handler": "between",
				"name":    "soaktcp",
				"balance": map[string]any{"policy": "roundrobin"},
				"discovery": map[string]any{
					"kind": "json", "json_endpoint": discoveryURL, "interval": "500ms",
				},
				"healthcheck": map[string]any{
					"kind": "ping", "interval": "250ms", "timeout": "250ms", "fails": 1, "passes": 1, "port": healthPort,
				},
				"passive_health":             map[string]any{"max_fails": 1, "fail_duration": "2s"},
				"backend_connection_timeout": "1s",
				"retries":                    3 + variant,
				"max_connections":            10000 + variant,
				"client_idle_timeout":        "30s",
			}}}},
		},
		"soakudp": map[string]any{
			"listen": []string{"between+udp/" + udpListen},
			"routes": []any{map[string]any{"handle": []any{map[string]any{
				"handler":             "between",
				"name":                "soakudp",
				"balance":             map[string]any{"policy": "roundrobin"},
				"discovery":           map[string]any{"kind": "static", "static_list": udpBackends},
				"udp":                 map[string]any{"max_responses": 1},
				"client_idle_timeout": []string{"2s", "3s"}[variant],
			}}}},
		},
	})
}

// soakTCPConn runs one checked stream through lb: read the backend's id,
// send size random bytes (paced), read them back and compare.
func soakTCPConn(lb string, seed uint64, bs []*soakBackend, out *outages, tally *soakTally) {
	r := rand.New(rand.NewPCG(seed, 1))
	size := 16<<10 + r.IntN(512<<10)
	pause := time.Duration(r.IntN(10)) * time.Millisecond
	if seed%5 == 0 { // some long-lived streams, so kills catch them mid-way
		pause = 100 * time.Millisecond
	}
	start := time.Now()
	c, err := net.DialTimeout("tcp", lb, 3*time.Second)
	if err != nil {
		tally.fail(false, "dial", "%v", err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	hdr := make([]byte, soakHeaderLen)
	if _, err := io.ReadFull(c, hdr); err != nil {
		// no backend named itself: excused only around a kill (a backend
		// killed between accepting and naming itself, or all retries spent
		// on backends that had just died)
		tally.fail(out.overlaps(start, time.Now(), 3*time.Second), "no backend", "after %s: %v", time.Since(start).Round(time.Millisecond), err)
		return
	}
	var id int
	var epoch int64
	if _, err := fmt.Sscanf(string(hdr), "%02d %08d\n", &id, &epoch); err != nil || id < 0 || id >= len(bs) {
		tally.fail(false, "corrupt header", "%q", hdr)
		return
	}
	be := bs[id]
	tally.mu.Lock()
	tally.perBE[id]++
	tally.mu.Unlock()

	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	wErr := make(chan error, 1)
	go func() {
		gen := rand.NewChaCha8(key)
		buf := make([]byte, soakChunk)
		for sent := 0; sent < size; {
			n := min(len(buf), size-sent)
			gen.Read(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				wErr <- err
				return
			}
			sent += n
			if pause > 0 {
				time.Sleep(pause)
			}
		}
		wErr <- c.(*net.TCPConn).CloseWrite()
	}()
	gen := rand.NewChaCha8(key)
	want := make([]byte, soakChunk)
	got := make([]byte, soakChunk)
	recv := 0
	var rErr error
	for recv < size {
		n, err := c.Read(got[:min(len(got), size-recv)])
		if n > 0 {
			gen.Read(want[:n])
			if !bytes.Equal(got[:n], want[:n]) {
				tally.fail(false, "corrupted", "backend %02d, byte %d of %d", id, recv+firstDiff(got[:n], want[:n]), size)
				return
			}
			recv += n
		}
		if err != nil {
			rErr = err
			break
		}
	}
	if rErr == nil {
		// everything came back; then the backend's EOF
		if n, err := c.Read(got[:1]); n != 0 || !errors.Is(err, io.EOF) {
			tally.fail(be.kills.Load() != epoch, "no EOF", "backend %02d: %d bytes more, %v", id, n, err)
			return
		}
		<-wErr
		tally.mu.Lock()
		tally.conns++
		tally.bytes += int64(size)
		tally.mu.Unlock()
		return
	}
	// cut short: only a killed backend may do that
	tally.fail(be.kills.Load() != epoch, "truncated", "backend %02d: %d of %d bytes back after %s: %v",
		id, recv, size, time.Since(start).Round(time.Millisecond), rErr)
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// soakUDPWorker sends one datagram at a time (worker, seq, random payload)
// and waits for the identical echo.
func soakUDPWorker(lb string, w int, stop <-chan struct{}, out *outages, tally *soakTally) {
	c, err := net.Dial("udp", lb)
	if err != nil {
		tally.fail(false, "udp dial", "%v", err)
		return
	}
	defer c.Close()
	r := rand.New(rand.NewPCG(uint64(w), 2))
	buf := make([]byte, 2048)
	for seq := uint32(0); ; seq++ {
		select {
		case <-stop:
			return
		default:
		}
		msg := make([]byte, 8+r.IntN(1200))
		binary.BigEndian.PutUint32(msg, uint32(w))
		binary.BigEndian.PutUint32(msg[4:], seq)
		for i := 8; i < len(msg); i++ {
			msg[i] = byte(r.Uint32())
		}
		sent := time.Now()
		if _, err := c.Write(msg); err != nil {
			// ECONNREFUSED of an earlier datagram may surface here
			tally.fail(out.overlaps(sent, time.Now(), 3*time.Second), "udp write", "%v", err)
			continue
		}
		deadline := sent.Add(time.Second)
		for {
			c.SetReadDeadline(deadline)
			n, err := c.Read(buf)
			if err != nil {
				tally.fail(out.overlaps(sent, time.Now(), 3*time.Second), "udp lost", "worker %d seq %d: %v", w, seq, err)
				break
			}
			if n >= 8 && binary.BigEndian.Uint32(buf[4:]) != seq {
				continue // a late echo of an earlier datagram
			}
			if string(buf[:n]) != string(msg) {
				tally.fail(false, "udp corrupted", "worker %d seq %d: %d bytes back, %d sent", w, seq, n, len(msg))
			} else {
				tally.mu.Lock()
				tally.datagrams++
				tally.mu.Unlock()
			}
			break
		}
	}
}

// TestSoak runs in parallel with TestFaults (CI time): each has its own
// caddy and backends, and the soak's tolerances do not depend on timing.
func TestSoak(t *testing.T) {
	t.Parallel()
	d := soakDuration(t)
	bs := newSoakBackends(t, soakTCPBackends)
	healthPort := bs[0].healthPort()
	disc, discURL := newSoakDiscovery(t, bs)
	var ubs []*soakUDPBackend
	var uaddrs []string
	udpNet := fmt.Sprintf("127.78.%d.", rand.IntN(250)+1)
	for i := range soakUDPBackends {
		u := newSoakUDPBackend(t, fmt.Sprintf("%s%d", udpNet, i+1))
		ubs = append(ubs, u)
		uaddrs = append(uaddrs, u.addr)
	}
	tcpLB, udpLB := freeAddr(t), freeUDPAddr(t)
	apps := func(v int) string { return soakApps(tcpLB, udpLB, discURL, healthPort, uaddrs, v) }
	c := startCaddy(t, apps(0))

	// warm up: every TCP backend served once, UDP answered, then baseline
	seen := map[string]bool{}
	waitFor(t, 15*time.Second, "every TCP backend to serve through the balancer", func() bool {
		if s, err := ask(tcpLB); err == nil {
			seen[s] = true
		}
		return len(seen) == soakTCPBackends
	})
	warm := dialUDP(t, udpLB)
	udpAskRetry(t, warm, "warm")
	warm.Close()
	c.waitSessions(t, "soakudp", 0, 10*time.Second)
	gcCaddy(t, c)
	base := c.figures(t)

	tally := &soakTally{excused: map[string]int{}, failed: map[string]int{}, perBE: map[int]int{}}
	tcpOut, udpOut := &outages{}, &outages{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var seq atomic.Uint64
	for range soakTCPWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				soakTCPConn(tcpLB, seq.Add(1), bs, tcpOut, tally)
			}
		}()
	}
	for w := range soakUDPWorkers {
		wg.Add(1)
		go func() { defer wg.Done(); soakUDPWorker(udpLB, w, stop, udpOut, tally) }()
	}
	rssStop := make(chan struct{})
	rssDone := rssSampler(c.pid(), 500*time.Millisecond, rssStop)

	// chaos: every second one change, each undone three seconds later.
	// Backend 00 is never touched, so some backend can always serve.
	var chaosErr atomic.Value
	var kills, flaps, discChanges, reviveRetries atomic.Int64
	chaosDone := make(chan struct{})
	go func() {
		defer close(chaosDone)
		r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
		killed, flapped, unlisted, udpKilled := -1, -1, -1, -1
		tk := time.NewTicker(soakChaosEvery)
		defer tk.Stop()
		for step := 0; ; step++ {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			var err error
			switch step % 4 {
			case 0:
				if killed >= 0 {
					// a port still taken: stays down, tried again next time
					if reviveErr := bs[killed].revive(); reviveErr != nil {
						reviveRetries.Add(1)
						break
					}
					tcpOut.revived(killed)
					killed = -1
				} else {
					killed = 1 + r.IntN(soakTCPBackends-1)
					tcpOut.killed(killed)
					bs[killed].kill()
					kills.Add(1)
				}
			case 1:
				if flapped >= 0 {
					err = bs[flapped].setHealthy(true)
					flapped = -1
				} else {
					flapped = 1 + r.IntN(soakTCPBackends-1)
					err = bs[flapped].setHealthy(false)
					flaps.Add(1)
				}
			case 2:
				if unlisted >= 0 {
					disc.set(unlisted, true)
					unlisted = -1
				} else {
					unlisted = 1 + r.IntN(soakTCPBackends-1)
					disc.set(unlisted, false)
					discChanges.Add(1)
				}
			case 3:
				if udpKilled >= 0 {
					if reviveErr := ubs[udpKilled].revive(); reviveErr != nil {
						reviveRetries.Add(1)
						break
					}
					udpOut.revived(udpKilled)
					udpKilled = -1
				} else if step%8 == 3 { // UDP backends die half as often
					udpKilled = r.IntN(soakUDPBackends)
					udpOut.killed(udpKilled)
					ubs[udpKilled].kill()
					kills.Add(1)
				}
			}
			if err != nil {
				chaosErr.CompareAndSwap(nil, err)
			}
		}
	}()

	started := time.Now()
	reloads := 0
	reload := time.NewTicker(soakReloadEvery)
	end := time.NewTimer(d)
loop:
	for {
		select {
		case <-end.C:
			break loop
		case <-reload.C:
			if code, body := c.load(apps((reloads + 1) % 2)); code != 200 {
				close(stop)
				t.Fatalf("reload %d: %d %s", reloads+1, code, body)
			}
			reloads++
		}
	}
	reload.Stop()
	close(stop)
	<-chaosDone
	loadDone := make(chan struct{})
	go func() { wg.Wait(); close(loadDone) }()
	select {
	case <-loadDone:
	case <-time.After(90 * time.Second):
		t.Fatal("the load did not stop within 90s of the end")
	}
	elapsed := time.Since(started)
	if err, _ := chaosErr.Load().(error); err != nil {
		t.Errorf("chaos step: %v", err)
	}

	// everything back up; the figures must come back to the baseline
	for i, b := range bs {
		if err := b.revive(); err != nil {
			t.Fatal(err)
		}
		b.setHealthy(true)
		disc.set(i, true)
	}
	for _, u := range ubs {
		if err := u.revive(); err != nil {
			t.Fatal(err)
		}
	}
	c.waitSessions(t, "soakudp", 0, 15*time.Second)
	waitFor(t, 15*time.Second, "no active TCP connections", func() bool {
		return cmpGetStats(t, c, "soaktcp").ActiveConnections == 0
	})
	// Go's splice keeps a pool of pipes (two fds each) that only a garbage
	// collection releases: collect before comparing fds
	gcCaddy(t, c)
	after, ok := c.waitBaseline(t, base, 30*time.Second)
	close(rssStop)
	samples := <-rssDone
	peak := slices.Max(append(samples, after.rssKiB))

	tally.mu.Lock()
	defer tally.mu.Unlock()
	var per []string
	for i := range soakTCPBackends {
		per = append(per, fmt.Sprintf("%02d:%d", i, tally.perBE[i]))
	}
	t.Logf("soak %s: %d TCP connections ok (%.1f MiB checked, per backend %s), %d UDP datagrams ok; "+
		"excused failures (killed backend) %s; unexplained failures %s; %d reloads, %d kills (%d revivals retried), %d health flaps, %d discovery changes, %d discovery fetches; "+
		"RSS base %.1f MiB, peak %.1f MiB, end %.1f MiB; goroutines %d -> %d; fds %d -> %d; caddy log %.1f MiB",
		elapsed.Round(time.Second), tally.conns, float64(tally.bytes)/(1<<20), strings.Join(per, " "), tally.datagrams,
		countsString(tally.excused), countsString(tally.failed), reloads, kills.Load(), reviveRetries.Load(), flaps.Load(), discChanges.Load(), disc.hits.Load(),
		float64(base.rssKiB)/1024, float64(peak)/1024, float64(after.rssKiB)/1024, base.goroutines, after.goroutines, base.fds, after.fds, float64(len(c.logs()))/(1<<20))
	for _, f := range tally.first {
		t.Logf("  %s", f)
	}
	if len(tally.failed) > 0 {
		t.Errorf("failures not pinned on a killed backend: %s", countsString(tally.failed))
	}
	if tally.conns == 0 || tally.datagrams == 0 {
		t.Errorf("no load went through: %d connections, %d datagrams", tally.conns, tally.datagrams)
	}
	if want := int(d / soakReloadEvery); reloads < want {
		t.Errorf("%d reloads in %s, want %d", reloads, d, want)
	}
	if !ok {
		_, prof := c.goroutineProfile(t)
		t.Errorf("after the load: %s, baseline %s (slack %d fds, %d goroutines); largest goroutine groups:%s\nfds:%s",
			after, base, fdSlack, goroutineSlack, topStacks(prof, 8), fdReport(c.pid()))
	}
	if after.rssKiB > base.rssKiB+soakRSSSlackKiB {
		t.Errorf("RSS after the load %.1f MiB, baseline %.1f MiB: more than %d MiB above", float64(after.rssKiB)/1024, float64(base.rssKiB)/1024, soakRSSSlackKiB>>10)
	}
}

// fdReport describes a process's open fds for a failure message: each
// socket with its protocol, addresses and TCP state (from
// /proc/PID/net/{tcp,tcp6,udp,udp6}), other fds by their link target.
func fdReport(pid int) string {
	sockets := map[string]string{} // inode -> description
	tcpStates := map[string]string{"01": "ESTABLISHED", "02": "SYN_SENT", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "0A": "LISTEN", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "09": "LAST_ACK", "0B": "CLOSING"}
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, proto))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(l)
			if len(f) < 10 {
				continue
			}
			state := f[3]
			if strings.HasPrefix(proto, "tcp") {
				state = tcpStates[state]
			}
			sockets[f[9]] = fmt.Sprintf("%s %s->%s %s", proto, hexAddr(f[1]), hexAddr(f[2]), state)
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return err.Error()
	}
	count := map[string]int{}
	for _, e := range ents {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err != nil {
			continue
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			if d, ok := sockets[strings.TrimSuffix(inode, "]")]; ok {
				target = d
			}
		}
		count[target]++
	}
	var l []string
	for k, v := range count {
		l = append(l, fmt.Sprintf("\n  %3d  %s", v, k))
	}
	sort.Strings(l)
	return strings.Join(l, "")
}

// hexAddr renders /proc/net's "0100007F:1F90" (IPv4 only; IPv6 as is).
func hexAddr(s string) string {
	ip, port, ok := strings.Cut(s, ":")
	if !ok || len(ip) != 8 {
		return s
	}
	var b [4]byte
	for i := range 4 {
		fmt.Sscanf(ip[2*(3-i):2*(3-i)+2], "%02X", &b[i])
	}
	var p int
	fmt.Sscanf(port, "%X", &p)
	return fmt.Sprintf("%d.%d.%d.%d:%d", b[0], b[1], b[2], b[3], p)
}

// gcCaddy makes the caddy process collect garbage (the admin endpoint's
// /debug/pprof/heap?gc=1) three times: sync.Pool keeps its items for two
// collections and finalizers (such as the one that closes a pooled splice
// pipe) run after the third.
func gcCaddy(t testing.TB, c *instance) {
	t.Helper()
	for range 3 {
		resp, err := adminClient.Get("http://" + c.admin + "/debug/pprof/heap?gc=1")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
