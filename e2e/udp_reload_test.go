package e2e

// 20 reloads while 200 UDP client sessions are active. On between+udp/ the
// socket and its session table survive every reload: no session may lose a
// datagram, and goroutines and fds are back at their baseline afterwards. On
// caddy-l4's stock udp/ every reload binds a new socket and strands the old
// one's sessions: the test only logs what was lost and what leaked.

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	reloadClients = 200
	reloadCount   = 20
	// each client sends one datagram every reloadEvery and waits for its
	// echo up to reloadTimeout (a datagram without an echo by then is lost)
	reloadEvery   = 50 * time.Millisecond
	reloadTimeout = 2 * time.Second
	reloadIdle    = 2 * time.Second // client_idle_timeout
	// reloadLimit bounds the whole load phase
	reloadLimit = 3 * time.Minute
)

// reloadLoadResult is what the clients of udpReloadUnderLoad saw.
type reloadLoadResult struct {
	sent, answered, lost int64
	firstLost            []string
	clientsLost          int // clients that lost at least one datagram
}

func TestUDPReloadUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("20 reloads under load")
	}
	for _, kind := range udpKinds {
		t.Run(kind.name, func(t *testing.T) { testUDPReloadUnderLoad(t, kind.name, kind.prefix) })
	}
}

func testUDPReloadUnderLoad(t *testing.T, kind, prefix string) {
	stock := kind == "udp"
	e1, e2 := udpEchoServer(t, 2), udpEchoServer(t, 2)
	addr := freeUDPAddr(t)
	config := func(i int) string {
		// a changed handler on every reload
		return between(map[string]any{"echo": udpServer(prefix+addr, nil, map[string]any{
			"client_idle_timeout":        reloadIdle.String(),
			"backend_connection_timeout": fmt.Sprintf("%dms", 1000+i),
		}, e1, e2)})
	}
	c := startCaddy(t, config(0))
	c.scrape(t)
	base := c.figures(t)
	t.Logf("%s: baseline before any traffic: %s", kind, base)

	var (
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		answered atomic.Int64
		ready    atomic.Int64
		mu       sync.Mutex
		res      reloadLoadResult
	)
	began := time.Now()
	for id := range reloadClients {
		cl := dialUDP(t, addr)
		cl.SetReadBuffer(256 << 10)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var sent, lost int64
			var firstLost string
			p := make([]byte, 32)
			buf := make([]byte, 2048)
			first := true
			next := time.Now()
		loop:
			for seq := uint32(0); time.Since(began) < reloadLimit; seq++ {
				select {
				case <-stop:
					break loop
				default:
				}
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				next = next.Add(reloadEvery)
				binary.BigEndian.PutUint32(p, uint32(id))
				binary.BigEndian.PutUint32(p[4:], seq)
				if _, err := cl.Write(p); err != nil {
					continue
				}
				sent++
				deadline := time.Now().Add(reloadTimeout)
				if first {
					// the first datagram: the listener may still be coming up
					deadline = time.Now().Add(5 * time.Second)
				}
				cl.SetReadDeadline(deadline)
				for {
					k, err := cl.Read(buf)
					if err != nil {
						lost++
						if firstLost == "" {
							firstLost = fmt.Sprintf("client %d seq %d at %s: %v", id, seq, time.Since(began).Round(time.Millisecond), err)
						}
						break
					}
					// an echo of an earlier datagram (late) is skipped
					if k == len(p) && binary.BigEndian.Uint32(buf[4:]) == seq {
						answered.Add(1)
						if first {
							first = false
							ready.Add(1)
						}
						break
					}
				}
			}
			mu.Lock()
			res.sent += sent
			res.lost += lost
			if lost > 0 {
				res.clientsLost++
				if len(res.firstLost) < 5 {
					res.firstLost = append(res.firstLost, firstLost)
				}
			}
			mu.Unlock()
		}()
	}
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()
	waitFor(t, 15*time.Second, "all clients to get a first echo", func() bool { return ready.Load() == reloadClients })
	if s := c.sessionsActive(t, "echo"); s < reloadClients {
		t.Logf("%s: %g sessions active with %d clients", kind, s, reloadClients)
	}
	during := c.figures(t)
	reloads := 0
	for i := 1; i <= reloadCount; i++ {
		before := answered.Load()
		// every client answered about twice since the last reload
		waitFor(t, 20*time.Second, fmt.Sprintf("echoes before reload %d", i), func() bool {
			return answered.Load() >= before+2*reloadClients
		})
		if code, body := c.load(config(i)); code != 200 {
			t.Fatalf("reload %d: %d %s", i, code, body)
		}
		reloads++
	}
	before := answered.Load()
	waitFor(t, 20*time.Second, "echoes after the last reload", func() bool {
		return answered.Load() >= before+4*reloadClients
	})
	stopLoad()
	res.answered = answered.Load()
	t.Logf("%s: %d clients, %d reloads, %d datagrams sent, %d answered, %d lost (by %d clients); figures under load: %s",
		kind, reloadClients, reloads, res.sent, res.answered, res.lost, res.clientsLost, during)
	for _, l := range res.firstLost {
		t.Logf("  lost: %s", l)
	}
	m := c.scrape(t)
	hDrops, lDrops := udpDrops(m, "echo", "")
	t.Logf("%s: drops counted by Between: handler %g, listener %g\n%s", kind, hDrops, lDrops, udpMetricLines(m))
	if !stock && res.lost > 0 {
		t.Errorf("%s: %d datagrams of %d clients lost during %d reloads; first: %v", kind, res.lost, res.clientsLost, reloads, res.firstLost)
	}

	// after the clients stop, their sessions idle out and everything the
	// reloads and the sessions started is gone again
	if stock {
		// on udp/ Between's virtual sessions end, caddy-l4's may not: log
		deadline := time.Now().Add(reloadIdle + 10*time.Second)
		for time.Now().Before(deadline) && c.sessionsActive(t, "echo") != 0 {
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("udp/: between_udp_sessions_active 10s after the idle timeout: %g", c.sessionsActive(t, "echo"))
		now, _ := c.waitBaseline(t, base, 10*time.Second)
		_, prof := c.goroutineProfile(t)
		if p := os.Getenv("BETWEEN_E2E_PROFILE"); p != "" {
			os.WriteFile(p, []byte(prof), 0o600)
		}
		t.Logf("udp/ after %d reloads with %d sessions: %s, baseline %s: %+d fds, %+d goroutines, %+.1f MiB RSS left behind; largest goroutine groups:%s",
			reloads, reloadClients, now, base, now.fds-base.fds, now.goroutines-base.goroutines,
			float64(now.rssKiB-base.rssKiB)/1024, topStacks(prof, 6))
		return
	}
	c.waitSessions(t, "echo", 0, reloadIdle+10*time.Second)
	waitFor(t, 10*time.Second, "the between+udp listener's session table to empty", func() bool {
		return metricSum(c.scrape(t), "between_udp_listener_sessions") == 0
	})
	now, ok := c.waitBaseline(t, base, 20*time.Second)
	t.Logf("%s after %d reloads: %s (baseline %s)", kind, reloads, now, base)
	if !ok {
		_, prof := c.goroutineProfile(t)
		t.Errorf("%s: fds or goroutines not back to baseline after %d reloads: %s, baseline %s; largest goroutine groups:%s",
			kind, reloads, now, base, topStacks(prof, 8))
	}
}
