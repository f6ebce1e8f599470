package e2e

// 10 000 datagrams/s for 10 s from 1 000 client sockets through a
// between+udp/ listener to two echo backends: no datagram dropped by Between,
// memory flat, sessions back to 0 after the idle timeout, fds and goroutines
// back to their baseline.

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	loadSockets  = 1000
	loadRate     = 10000 // datagrams per second, all sockets together
	loadDuration = 10 * time.Second
	loadSize     = 64
	loadIdle     = 2 * time.Second // client_idle_timeout of the handler
	// loadDrain is how long replies are awaited after the last send.
	loadDrain = 3 * time.Second
	// memory is flat when the largest RSS of the last third of the load is
	// at most memFactor times the largest of the first third plus memSlack
	memFactor = 1.5
	memSlack  = 10 << 10 // KiB
)

// udpSocketDrops returns the kernel's drop counters (the last column of
// /proc/net/udp) of the IPv4 UDP sockets bound to port, summed.
func udpSocketDrops(port int) (uint64, error) {
	f, err := os.Open("/proc/net/udp")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var sum uint64
	suffix := fmt.Sprintf(":%04X", port)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 13 || !strings.HasSuffix(fields[1], suffix) {
			continue
		}
		n, err := strconv.ParseUint(fields[len(fields)-1], 10, 64)
		if err == nil {
			sum += n
		}
	}
	return sum, sc.Err()
}

func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// loadResult is what one paced load run measured.
type loadResult struct {
	sent, recv, dup, bad int64
	sendTook             time.Duration
	rtts                 []time.Duration
}

func (r loadResult) percentile(p float64) time.Duration {
	if len(r.rtts) == 0 {
		return 0
	}
	s := slices.Clone(r.rtts)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// pacedLoad sends rate datagrams/s in all for d, spread round robin over
// conns (each datagram carries its socket, its sequence number and its send
// time), and counts the echoes until loadDrain after the last send.
func pacedLoad(t *testing.T, conns []*net.UDPConn, rate int, d time.Duration) loadResult {
	t.Helper()
	perConn := int(int64(rate)*int64(d/time.Millisecond)/1000) / len(conns)
	total := perConn * len(conns)
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	// every reader stops at this deadline at the latest (bounded wait)
	readEnd := start.Add(d + d/5 + loadDrain)
	var (
		wg             sync.WaitGroup
		recv, dup, bad atomic.Int64
		mu             sync.Mutex
		rtts           = make([]time.Duration, 0, total)
	)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := make([]bool, perConn)
			n := 0
			local := make([]time.Duration, 0, perConn)
			buf := make([]byte, 2048)
			c.SetReadDeadline(readEnd)
			for n < perConn {
				k, err := c.Read(buf)
				if err != nil {
					break
				}
				now := time.Now()
				if k != loadSize || int(binary.BigEndian.Uint32(buf)) != i {
					bad.Add(1)
					continue
				}
				seq := int(binary.BigEndian.Uint32(buf[4:]))
				if seq >= perConn {
					bad.Add(1)
					continue
				}
				if got[seq] {
					dup.Add(1)
					continue
				}
				got[seq] = true
				n++
				local = append(local, now.Sub(time.Unix(0, int64(binary.BigEndian.Uint64(buf[8:])))))
			}
			recv.Add(int64(n))
			mu.Lock()
			rtts = append(rtts, local...)
			mu.Unlock()
		}()
	}
	var sent int64
	var sendErr error
	p := make([]byte, loadSize)
	for i := range total {
		// pace in steps of 1 ms (loadRate/1000 datagrams per step)
		if i%(rate/1000) == 0 {
			if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
				time.Sleep(wait)
			}
		}
		ci, seq := i%len(conns), i/len(conns)
		binary.BigEndian.PutUint32(p, uint32(ci))
		binary.BigEndian.PutUint32(p[4:], uint32(seq))
		binary.BigEndian.PutUint64(p[8:], uint64(time.Now().UnixNano()))
		if _, err := conns[ci].Write(p); err != nil {
			if sendErr == nil {
				sendErr = err
			}
			continue
		}
		sent++
	}
	sendTook := time.Since(start)
	wg.Wait()
	if sendErr != nil {
		t.Errorf("load client: send failed: %v", sendErr)
	}
	return loadResult{sent: sent, recv: recv.Load(), dup: dup.Load(), bad: bad.Load(), sendTook: sendTook, rtts: rtts}
}

// rssSampler samples VmRSS (KiB) of pid every interval until stop is closed.
func rssSampler(pid int, interval time.Duration, stop <-chan struct{}) <-chan []int64 {
	out := make(chan []int64, 1)
	go func() {
		var samples []int64
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
				for _, l := range strings.Split(string(b), "\n") {
					if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
						n, _ := strconv.ParseInt(f[1], 10, 64)
						samples = append(samples, n)
					}
				}
			}
			select {
			case <-stop:
				out <- samples
				return
			case <-tk.C:
			}
		}
	}()
	return out
}

// memFlat reports whether samples (KiB, in time order) are flat: the
// largest of the last third at most memFactor times the largest of the
// first third plus memSlack.
func memFlat(samples []int64) (first, last int64, ok bool) {
	n := len(samples) / 3
	if n == 0 {
		return 0, 0, false
	}
	first, last = slices.Max(samples[:n]), slices.Max(samples[len(samples)-n:])
	return first, last, float64(last) <= memFactor*float64(first)+memSlack
}

func TestUDPLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s of load")
	}
	e1, e2 := udpEchoServer(t, 2), udpEchoServer(t, 2)
	addr := freeUDPAddr(t)
	c := startUDP(t, "load", udpServer("between+udp/"+addr, nil, map[string]any{"client_idle_timeout": loadIdle.String()}, e1, e2))
	warm := dialUDP(t, addr)
	udpAskRetry(t, warm, "warm")
	warm.Close()
	c.waitSessions(t, "load", 0, loadIdle+5*time.Second)
	c.scrape(t)
	base := c.figures(t)
	t.Logf("baseline: %s", base)
	proxyDrops0, _ := udpSocketDrops(portOf(addr))

	conns := make([]*net.UDPConn, loadSockets)
	for i := range conns {
		cl, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(mustAddrPort(t, addr)))
		if err != nil {
			t.Fatal(err)
		}
		cl.SetReadBuffer(256 << 10)
		conns[i] = cl
	}
	closeConns := sync.OnceFunc(func() {
		for _, cl := range conns {
			cl.Close()
		}
	})
	defer closeConns()

	stopRSS := make(chan struct{})
	rssCh := rssSampler(c.pid(), 200*time.Millisecond, stopRSS)
	// peak of open sessions while the load runs (scraped in the background)
	var peakSessions atomic.Int64
	stopScrape := make(chan struct{})
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		for {
			select {
			case <-stopScrape:
				return
			case <-time.After(500 * time.Millisecond):
			}
			if m, err := udpScanMetrics(c.admin); err == nil {
				if s := int64(metricSum(m, "between_udp_sessions_active", `server="load"`)); s > peakSessions.Load() {
					peakSessions.Store(s)
				}
			}
		}
	}()
	// the kernel's drops at the proxy's socket, per second of the load
	stopDrops := make(chan struct{})
	dropsCh := make(chan []uint64, 1)
	go func() {
		var perSec []uint64
		prev := proxyDrops0
		for {
			select {
			case <-stopDrops:
				dropsCh <- perSec
				return
			case <-time.After(time.Second):
			}
			n, _ := udpSocketDrops(portOf(addr))
			perSec = append(perSec, n-prev)
			prev = n
		}
	}()
	res := pacedLoad(t, conns, loadRate, loadDuration)
	close(stopRSS)
	close(stopScrape)
	close(stopDrops)
	<-scraped
	samples := <-rssCh
	dropTimeline := <-dropsCh
	closeConns()

	m := c.scrape(t)
	hDrops, lDrops := udpDrops(m, "load", "")
	proxyDrops1, _ := udpSocketDrops(portOf(addr))
	be1, _ := udpSocketDrops(portOf(e1))
	be2, _ := udpSocketDrops(portOf(e2))
	lost := res.sent - res.recv
	t.Logf("load: %d sockets, %d datagrams sent in %s (%.0f/s), %d echoes back, %d lost end to end (%.3f%%), %d duplicate, %d foreign",
		loadSockets, res.sent, res.sendTook.Round(time.Millisecond), float64(res.sent)/res.sendTook.Seconds(),
		res.recv, lost, 100*float64(lost)/float64(max(res.sent, 1)), res.dup, res.bad)
	t.Logf("RTT p50 %s, p99 %s, max %s; peak sessions %d", res.percentile(0.5), res.percentile(0.99), res.percentile(1), peakSessions.Load())
	t.Logf("drops: Between handler %g, between+udp listener %g; kernel drops at the proxy's socket %d (per second of the load: %v), at the echo backends %d",
		hDrops, lDrops, proxyDrops1-proxyDrops0, dropTimeline, be1+be2)
	t.Logf("between_udp metrics after the load:\n%s", udpMetricLines(m))

	if res.sendTook > loadDuration+loadDuration/5 {
		t.Errorf("the load client took %s to send %d datagrams (want about %s): it could not keep the pace", res.sendTook, res.sent, loadDuration)
	}
	if hDrops != 0 || lDrops != 0 {
		t.Errorf("Between dropped datagrams: handler %g, listener %g (want 0)", hDrops, lDrops)
	}
	if res.dup != 0 || res.bad != 0 {
		t.Errorf("%d duplicate and %d foreign replies", res.dup, res.bad)
	}
	if res.recv == 0 {
		t.Fatal("no echo came back")
	}
	first, last, ok := memFlat(samples)
	t.Logf("RSS during the load (%d samples): max of the first third %.1f MiB, of the last third %.1f MiB", len(samples), float64(first)/1024, float64(last)/1024)
	if !ok {
		t.Errorf("memory grew during the load: max RSS %.1f MiB in the first third, %.1f MiB in the last (allowed: x%.1f + %d MiB)",
			float64(first)/1024, float64(last)/1024, memFactor, memSlack>>10)
	}

	// after the idle timeout every session ends
	c.waitSessions(t, "load", 0, loadIdle+10*time.Second)
	waitFor(t, 10*time.Second, "the between+udp listener's session table to empty", func() bool {
		return metricSum(c.scrape(t), "between_udp_listener_sessions") == 0
	})
	now, ok := c.waitBaseline(t, base, 15*time.Second)
	t.Logf("after the load: %s (baseline %s)", now, base)
	if !ok {
		_, prof := c.goroutineProfile(t)
		t.Errorf("fds or goroutines not back to baseline 15s after the sessions ended: %s, baseline %s; largest goroutine groups:%s",
			now, base, topStacks(prof, 8))
	}
}

// mustAddrPort parses "host:port".
func mustAddrPort(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}
