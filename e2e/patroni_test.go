package e2e

// PostgreSQL HA the Patroni way (examples/patroni.caddyfile): one listener
// sends clients to the leader, another to the replicas, decided by an http
// health check on each node's Patroni REST API (/primary, /replica). The
// database is played by real redis-server instances in a real replication
// set (a replica refuses writes with -READONLY, as a PostgreSQL standby
// does), one per loopback address 127.0.0.1-3, each with an in-test stand-in
// of Patroni's REST API on the same address and one shared port, as Patroni
// runs on every node.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func init() {
	exercises["patroni.caddyfile"] = exercisePatroni
}

// The example's health check timing; checked against the file, since the
// test's deadlines are computed from them.
const (
	patroniInterval = time.Second
	patroniFails    = 2
	patroniPasses   = 2
	// patroniMargin covers check jitter (interval/10 phase, ±5%), the check
	// itself and a loaded CI machine under -race.
	patroniMargin = 3 * time.Second
)

// patroniDeadline is how long after a role change Between may take to follow
// it: the slower of taking a backend down (fails checks) and up (passes).
var patroniDeadline = time.Duration(max(patroniFails, patroniPasses))*patroniInterval + patroniMargin

// Patroni roles as the stand-in reports them.
const (
	roleLeader  = "primary"
	roleReplica = "replica"
	roleStopped = "stopped" // Patroni up, PostgreSQL down: every role endpoint says 503
)

// patroniNode is one database node: redis-server on ip:redisPort and a
// stand-in of Patroni's REST API on ip:restPort.
type patroniNode struct {
	name  string // node1, node2, node3
	ip    string // 127.0.0.N
	addr  string // ip:redisPort
	runID string // redis run_id: tells which node answered through Between
	role  atomic.Value

	cmd    *exec.Cmd
	exited chan struct{}
	out    lockedBuffer
}

func (n *patroniNode) setRole(r string) { n.role.Store(r) }
func (n *patroniNode) getRole() string  { return n.role.Load().(string) }

// output returns what redis-server printed.
func (n *patroniNode) output() string { return n.out.String() }

// stop kills redis-server (by its PID) and waits for it.
func (n *patroniNode) stop() {
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Kill()
	<-n.exited
}

// patroniCluster is three nodes: node1 the leader, node2 and node3 its
// replicas.
type patroniCluster struct {
	nodes     []*patroniNode
	redisPort int
	restPort  int
}

// startPatroniCluster starts the REST stand-ins and the redis replication set
// and returns when every redis answers.
func startPatroniCluster(t *testing.T) *patroniCluster {
	t.Helper()
	bin := needTool(t, "redis-server", "redis-server")
	cl := &patroniCluster{}
	for i := range 3 {
		n := &patroniNode{name: fmt.Sprintf("node%d", i+1), ip: fmt.Sprintf("127.0.0.%d", i+1)}
		n.setRole(roleReplica)
		cl.nodes = append(cl.nodes, n)
	}
	cl.nodes[0].setRole(roleLeader)
	cl.startREST(t)
	var err error
	for range 5 { // a port taken between the probe and redis's bind: try another
		cl.redisPort = sharedLoopbackPort(t)
		if err = cl.startRedis(t, bin); err == nil {
			return cl
		}
		for _, n := range cl.nodes {
			n.stop()
		}
	}
	t.Fatal(err)
	return nil
}

// sharedLoopbackPort returns a port that was free on 127.0.0.1, .2 and .3 a
// moment ago.
func sharedLoopbackPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		if lns, err := listenLoopbacks(0); err == nil {
			port := lns[0].Addr().(*net.TCPAddr).Port
			for _, ln := range lns {
				ln.Close()
			}
			return port
		}
	}
	t.Fatal("no port free on 127.0.0.1-3")
	return 0
}

// listenLoopbacks listens on port (0: one the kernel picks for 127.0.0.1) on
// 127.0.0.1, 127.0.0.2 and 127.0.0.3.
func listenLoopbacks(port int) ([]net.Listener, error) {
	var lns []net.Listener
	for i := 1; i <= 3; i++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", i, port))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
		port = ln.Addr().(*net.TCPAddr).Port
	}
	return lns, nil
}

// startREST serves the stand-ins of Patroni's REST API, one per node on the
// node's address and a shared port, until the test ends. Like Patroni:
// /primary (also /leader, /master) answers 200 on the leader, /replica 200 on
// a running replica, /read-only 200 on either, 503 otherwise, with a JSON
// body whose "state" is "running" (never "healthy", so Between's rule for
// JSON health bodies cannot turn a 503 into healthy).
func (cl *patroniCluster) startREST(t *testing.T) {
	t.Helper()
	var lns []net.Listener
	var err error
	for range 20 {
		if lns, err = listenLoopbacks(0); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("REST stand-ins: %v", err)
	}
	cl.restPort = lns[0].Addr().(*net.TCPAddr).Port
	for i, ln := range lns {
		n := cl.nodes[i]
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			role := n.getRole()
			var ok bool
			switch r.URL.Path {
			case "/primary", "/leader", "/master":
				ok = role == roleLeader
			case "/replica":
				ok = role == roleReplica
			case "/read-only":
				ok = role == roleLeader || role == roleReplica
			default:
				http.NotFound(w, r)
				return
			}
			state := "running"
			if role == roleStopped {
				state = "stopped"
			}
			w.Header().Set("Content-Type", "application/json")
			if ok {
				w.WriteHeader(http.StatusOK)
			} else {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			json.NewEncoder(w).Encode(map[string]any{"state": state, "role": role, "server_version": 160004})
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
}

// startRedis starts the replication set on cl.redisPort: node1 the master,
// the others its replicas. Each is stopped (by its PID) when the test ends.
func (cl *patroniCluster) startRedis(t *testing.T, bin string) error {
	port := strconv.Itoa(cl.redisPort)
	for i, n := range cl.nodes {
		n.addr = net.JoinHostPort(n.ip, port)
		args := []string{"--port", port, "--bind", n.ip, "--save", "", "--appendonly", "no",
			"--dir", t.TempDir(), "--protected-mode", "no", "--daemonize", "no"}
		if i > 0 {
			args = append(args, "--replicaof", cl.nodes[0].ip, port)
		}
		n.cmd = exec.Command(bin, args...)
		n.out.Reset()
		n.cmd.Stdout, n.cmd.Stderr = &n.out, &n.out
		if err := n.cmd.Start(); err != nil {
			n.cmd = nil
			return err
		}
		n.exited = make(chan struct{})
		go func(cmd *exec.Cmd, exited chan struct{}) { cmd.Wait(); close(exited) }(n.cmd, n.exited)
		t.Cleanup(n.stop)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range cl.nodes {
		for {
			select {
			case <-n.exited:
				return fmt.Errorf("redis-server %s on %s exited: %s", n.name, n.addr, n.output())
			default:
			}
			info, err := redisCommand(n.addr, "INFO", "server")
			if err == nil {
				n.runID = infoField(info, "run_id")
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("redis-server %s on %s did not answer: %v\n%s", n.name, n.addr, err, n.output())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// byRunID returns the node with that redis run_id.
func (cl *patroniCluster) byRunID(id string) *patroniNode {
	for _, n := range cl.nodes {
		if n.runID == id {
			return n
		}
	}
	return nil
}

// byAddr returns the node with that redis address.
func (cl *patroniCluster) byAddr(addr string) *patroniNode {
	for _, n := range cl.nodes {
		if n.addr == addr {
			return n
		}
	}
	return nil
}

// promote makes newLeader the leader the way a Patroni switchover does: the
// old leader is demoted first (a replica of the new one, read-only), then
// the new one promoted, then the other replicas follow it; each node's REST
// role changes with its database. A node whose role is roleStopped stays so.
func (cl *patroniCluster) promote(t *testing.T, newLeader *patroniNode) {
	t.Helper()
	port := strconv.Itoa(cl.redisPort)
	for _, n := range cl.nodes {
		if n.getRole() == roleLeader && n != newLeader {
			mustRedis(t, n.addr, "REPLICAOF", newLeader.ip, port)
			n.setRole(roleReplica)
		}
	}
	mustRedis(t, newLeader.addr, "REPLICAOF", "NO", "ONE")
	newLeader.setRole(roleLeader)
	for _, n := range cl.nodes {
		if n != newLeader && n.getRole() == roleReplica {
			mustRedis(t, n.addr, "REPLICAOF", newLeader.ip, port)
		}
	}
}

// routeConfig is the example with its addresses replaced: nodes on
// 127.0.0.1-3, the REST port, and free listener ports for writes and reads.
func (cl *patroniCluster) routeConfig(t *testing.T, path string) (text, writes, reads string) {
	t.Helper()
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text = string(orig)
	for _, want := range []string{
		fmt.Sprintf("interval %s", patroniInterval), fmt.Sprintf("fails %d", patroniFails),
		fmt.Sprintf("passes %d", patroniPasses), "initial_status unhealthy",
	} {
		if strings.Count(text, want) != 2 {
			t.Fatalf("%s: want %q in both handlers (the test's deadlines assume it)", path, want)
		}
	}
	writes, reads = freeAddr(t), freeAddr(t)
	replace := func(old, new string, count int) {
		if got := strings.Count(text, old); got != count {
			t.Fatalf("%s: %q appears %d times, want %d", path, old, got, count)
		}
		text = strings.ReplaceAll(text, old, new)
	}
	for i, n := range cl.nodes {
		replace(fmt.Sprintf("10.0.0.1%d:5432", i+1), n.addr, 2)
	}
	replace("port 8008", fmt.Sprintf("port %d", cl.restPort), 2)
	replace("between+tcp/:5000", "between+tcp/"+writes, 1)
	replace("between+tcp/:5001", "between+tcp/"+reads, 1)
	text = strings.Replace(text, "{\n", "{\n\tadmin ADMIN\n", 1)
	return text, writes, reads
}

// exercisePatroni: writes reach the leader only, reads the replicas only,
// from the first client on (initial_status unhealthy: no client is sent to
// a node before its role is known).
func exercisePatroni(t *testing.T, path string) {
	cl := startPatroniCluster(t)
	text, writes, reads := cl.routeConfig(t, path)
	c := startCaddyfile(t, text)
	p := &patroniProbe{t: t, cl: cl, c: c, writes: writes, reads: reads}
	p.waitRouting(cl.nodes[0], 10*time.Second)
	p.assertRouting(cl.nodes[0])
}

// TestPatroniFailover: the example through a switchover (node1 → node2) and
// then a crash of the new leader (node2 down, node3 promoted): each time,
// within interval × fails + margin, writes reach the new leader and reads
// only the replicas.
func TestPatroniFailover(t *testing.T) {
	cl := startPatroniCluster(t)
	text, writes, reads := cl.routeConfig(t, repoRoot()+"/examples/patroni.caddyfile")
	c := startCaddyfile(t, text)
	p := &patroniProbe{t: t, cl: cl, c: c, writes: writes, reads: reads}
	node1, node2, node3 := cl.nodes[0], cl.nodes[1], cl.nodes[2]
	p.waitRouting(node1, 10*time.Second)
	p.assertRouting(node1)

	// switchover: node1 demoted, node2 promoted
	start := time.Now()
	cl.promote(t, node2)
	p.waitRouting(node2, patroniDeadline)
	t.Logf("switchover followed in %s (deadline %s)", time.Since(start).Round(time.Millisecond), patroniDeadline)
	p.assertRouting(node2)

	// failover: node2 crashes (PostgreSQL down, Patroni reports stopped),
	// node3 is promoted; node1 keeps replicating from node3
	start = time.Now()
	node2.setRole(roleStopped)
	node2.stop()
	cl.promote(t, node3)
	p.waitRouting(node3, patroniDeadline)
	t.Logf("failover followed in %s (deadline %s)", time.Since(start).Round(time.Millisecond), patroniDeadline)
	p.assertRouting(node3)
}

// patroniProbe sends clients through the example's two listeners.
type patroniProbe struct {
	t             *testing.T
	cl            *patroniCluster
	c             *instance
	writes, reads string
	key           atomic.Int64
}

// liveNodes returns the nodes the named handler currently reports healthy.
func (p *patroniProbe) liveNodes(handler string) map[*patroniNode]bool {
	live := map[*patroniNode]bool{}
	for _, b := range p.c.stats(p.t, handler).Backends {
		if b.Stats.Live {
			live[p.cl.byAddr(net.JoinHostPort(b.Host, b.Port))] = true
		}
	}
	return live
}

// waitRouting waits until Between's health view matches the cluster: only
// leader live for writes, exactly the running replicas live for reads.
func (p *patroniProbe) waitRouting(leader *patroniNode, timeout time.Duration) {
	p.t.Helper()
	waitFor(p.t, timeout, leader.name+" as the only write backend and the replicas as the read backends", func() bool {
		w, r := p.liveNodes("pg-primary"), p.liveNodes("pg-replicas")
		if len(w) != 1 || !w[leader] {
			return false
		}
		for _, n := range p.cl.nodes {
			if r[n] != (n.getRole() == roleReplica) {
				return false
			}
		}
		return true
	})
}

// assertRouting sends 12 write sessions and 12 read sessions: every write
// lands on leader (the SET succeeds there and the key is on leader), every
// read on a replica, and roundrobin spreads the reads over every replica.
func (p *patroniProbe) assertRouting(leader *patroniNode) {
	p.t.Helper()
	for range 12 {
		n, key, err := p.write()
		if err != nil {
			p.t.Fatalf("write through %s: %v", p.writes, err)
		}
		if n != leader {
			p.t.Fatalf("a write reached %s, the leader is %s", n.name, leader.name)
		}
		if v, err := redisCommand(leader.addr, "GET", key); err != nil || v != "between" {
			p.t.Fatalf("key %s on the leader %s: %q, %v", key, leader.name, v, err)
		}
	}
	seen := map[*patroniNode]int{}
	for range 12 {
		n, err := p.read()
		if err != nil {
			p.t.Fatalf("read through %s: %v", p.reads, err)
		}
		if n == leader || n.getRole() != roleReplica {
			p.t.Fatalf("a read reached %s (%s); the leader is %s", n.name, n.getRole(), leader.name)
		}
		seen[n]++
	}
	for _, n := range p.cl.nodes {
		if n.getRole() == roleReplica && seen[n] == 0 {
			p.t.Errorf("no read reached the replica %s: %v", n.name, seen)
		}
	}
}

// write opens a session through the write listener, asks which node it is
// and sets a new key there.
func (p *patroniProbe) write() (*patroniNode, string, error) {
	c, err := dialRedis(p.writes)
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	info, err := c.do("INFO", "server")
	if err != nil {
		return nil, "", err
	}
	n := p.cl.byRunID(infoField(info, "run_id"))
	if n == nil {
		return nil, "", fmt.Errorf("unknown node answered: %q", infoField(info, "run_id"))
	}
	key := fmt.Sprintf("k%d", p.key.Add(1))
	if _, err := c.do("SET", key, "between"); err != nil {
		return n, key, fmt.Errorf("SET on %s: %w", n.name, err)
	}
	return n, key, nil
}

// read opens a session through the read listener and asks which node it is
// and its replication role.
func (p *patroniProbe) read() (*patroniNode, error) {
	c, err := dialRedis(p.reads)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	info, err := c.do("INFO", "server")
	if err != nil {
		return nil, err
	}
	n := p.cl.byRunID(infoField(info, "run_id"))
	if n == nil {
		return nil, fmt.Errorf("unknown node answered: %q", infoField(info, "run_id"))
	}
	repl, err := c.do("INFO", "replication")
	if err != nil {
		return nil, err
	}
	if role := infoField(repl, "role"); role != "slave" {
		return nil, fmt.Errorf("a read session reached %s whose redis role is %s", n.name, role)
	}
	return n, nil
}

// redisConn is one RESP connection.
type redisConn struct {
	net.Conn
	r *bufio.Reader
}

func dialRedis(addr string) (*redisConn, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	return &redisConn{Conn: c, r: bufio.NewReader(c)}, nil
}

// do sends one command and reads its reply: a status, integer or bulk string
// as text; an error reply as an error.
func (c *redisConn) do(args ...string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis: %s", line[1:])
	case '$':
		size, err := strconv.Atoi(line[1:])
		if err != nil || size < 0 {
			return "", err
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(c.r, buf); err != nil {
			return "", err
		}
		return string(buf[:size]), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

// redisCommand runs one command on a new connection.
func redisCommand(addr string, args ...string) (string, error) {
	c, err := dialRedis(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.do(args...)
}

func mustRedis(t *testing.T, addr string, args ...string) {
	t.Helper()
	if _, err := redisCommand(addr, args...); err != nil {
		t.Fatalf("redis %s %v: %v", addr, args, err)
	}
}

// infoField returns a field of an INFO reply ("name:value" lines).
func infoField(info, name string) string {
	for _, l := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			return v
		}
	}
	return ""
}
