package testpeers

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Dockerd is a dockerd started by a test: its own data and exec roots under
// a temporary directory, a unix socket, no iptables, no default bridge, and
// --live-restore so that containers outlive a stop of the daemon. Started
// with TLS it also listens on a TLS-verified TCP port on loopback.
type Dockerd struct {
	// Dir is the daemon's temporary directory.
	Dir string
	// Sock is the path of the daemon's unix socket.
	Sock string
	// TLSAddr is the TLS listener, 127.0.0.1:PORT (with TLS only).
	TLSAddr string
	// CA is the path of the CA certificate that signed the daemon's and the
	// client's certificates (with TLS only).
	CA string
	// Cert and Key are the paths of a client certificate and its key (with
	// TLS only).
	Cert, Key string
	// OtherCA is the path of a CA certificate that did not sign the
	// daemon's certificate (with TLS only).
	OtherCA string

	t      testing.TB
	args   []string
	cli    string
	cmd    *exec.Cmd
	exited chan struct{}
}

// StartDockerd starts a daemon (with a TLS listener too when tls is true)
// and imports bb:local, a static busybox with /bin/answer, which prints
// $NAME; the test's cleanup removes every container and network, stops the
// daemon and removes its directory. Without dockerd, the docker CLI, a
// static busybox or root the test skips, or fails when CI=true.
func StartDockerd(t testing.TB, tls bool) *Dockerd {
	t.Helper()
	const hint = " (Debian docker.io and busybox-static; see discovery/README.md)"
	dockerd, err := exec.LookPath("dockerd")
	if err != nil {
		Missing(t, "dockerd not installed"+hint)
	}
	cli, err := exec.LookPath("docker")
	if err != nil {
		Missing(t, "docker CLI not installed"+hint)
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil || !staticBinary(busybox) {
		Missing(t, "no static busybox"+hint)
	}
	if os.Geteuid() != 0 {
		Missing(t, "dockerd needs root"+hint)
	}
	// A short path: containerd's sockets live under it.
	dir, err := os.MkdirTemp("", "dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	d := &Dockerd{t: t, Dir: dir, Sock: filepath.Join(dir, "docker.sock"), cli: cli}
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.args = []string{dockerd,
		"--config-file", filepath.Join(dir, "daemon.json"),
		"--host", "unix://" + d.Sock,
	}
	if tls {
		d.TLSAddr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		serverCert, serverKey := d.writeCerts()
		d.args = append(d.args,
			"--host", "tcp://"+d.TLSAddr,
			"--tlsverify", "--tlscacert", d.CA, "--tlscert", serverCert, "--tlskey", serverKey)
	}
	d.args = append(d.args,
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"--iptables=false", "--ip6tables=false", "--bridge=none",
		"--live-restore", "--shutdown-timeout", "2",
	)
	t.Cleanup(d.cleanup)
	d.Start()
	d.importImage(busybox)
	return d
}

// Start runs dockerd again after Stop and waits until it answers (within
// 30s).
func (d *Dockerd) Start() {
	t := d.t
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(d.Dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(d.args[0], d.args[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	d.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		cmd.Wait()
		close(exited)
	}(d.cmd, d.exited)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if d.ping() {
			return
		}
		select {
		case <-d.exited:
			t.Fatalf("dockerd exited at start:\n%s", d.LogTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("dockerd did not answer within 30s:\n%s", d.LogTail())
}

func (d *Dockerd) ping() bool {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", d.Sock)
	}}
	defer tr.CloseIdleConnections()
	c := http.Client{Timeout: time.Second, Transport: tr}
	resp, err := c.Get("http://docker/_ping")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// Stop ends dockerd (SIGTERM to its PID, SIGKILL after 30s) and waits for
// it; containers live on (--live-restore).
func (d *Dockerd) Stop() {
	d.t.Helper()
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

// LogTail returns the last 30 lines of the daemon's log.
func (d *Dockerd) LogTail() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "dockerd.log"))
	return tail(string(b), 30)
}

// cleanup removes every container and network, stops the daemon and its
// containerd, unmounts what they left and removes the directory.
func (d *Dockerd) cleanup() {
	if d.t.Failed() {
		d.t.Logf("dockerd log:\n%s", d.LogTail())
	}
	if d.cmd == nil {
		// containers that outlived a stopped daemon (live-restore) are
		// removed through a daemon
		func() {
			defer func() { recover() }()
			d.Start()
		}()
	}
	if d.cmd != nil {
		if ids, err := d.Try(nil, "ps", "-aq"); err == nil && ids != "" {
			d.Try(nil, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
		}
		d.Try(nil, "network", "prune", "-f")
		d.Stop()
	}
	// dockerd stops the containerd it started; make sure of it
	if b, err := os.ReadFile(filepath.Join(d.Dir, "exec", "containerd", "containerd.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			if p, err := os.FindProcess(pid); err == nil && p.Signal(syscall.Signal(0)) == nil {
				p.Signal(syscall.SIGKILL)
			}
		}
	}
	unmountUnder(d.Dir)
	if err := os.RemoveAll(d.Dir); err != nil {
		d.t.Errorf("removing the daemon's directory: %v", err)
	}
}

// Docker runs the CLI against the daemon and returns its trimmed output; an
// error fails the test.
func (d *Dockerd) Docker(args ...string) string {
	d.t.Helper()
	out, err := d.Try(nil, args...)
	if err != nil {
		d.t.Fatalf("docker %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// Try runs the CLI against the daemon with stdin (nil for none) and a 30s
// timeout, and returns its trimmed output or an error with its stderr.
func (d *Dockerd) Try(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.cli, args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+d.Sock, "DOCKER_CONFIG="+filepath.Join(d.Dir, "cli"))
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Run starts a container of bb:local answering its name on port (nc, under
// docker-init so that a stop ends it at once) and returns its ID.
func (d *Dockerd) Run(name string, port int, opts ...string) string {
	d.t.Helper()
	args := append([]string{"run", "-d", "--init", "--name", name, "-e", "NAME=" + name}, opts...)
	args = append(args, "bb:local", "nc", "-ll", "-p", strconv.Itoa(port), "-e", "/bin/answer")
	return d.Docker(args...)
}

// importImage builds bb:local, a root file system with a static busybox, its
// applets as symlinks and /bin/answer (prints $NAME), without pulling.
func (d *Dockerd) importImage(busybox string) {
	t := d.t
	t.Helper()
	bin, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		h.ModTime = time.Unix(0, 0)
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []string{"bin/", "tmp/", "www/"} {
		add(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bin)
	for _, applet := range []string{"sh", "nc", "httpd", "sleep", "env", "cat", "echo"} {
		add(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
	}
	add(&tar.Header{Name: "bin/answer", Typeflag: tar.TypeReg, Mode: 0o755}, []byte("#!/bin/sh\necho \"$NAME\"\n"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Try(buf.Bytes(), "import", "-", "bb:local"); err != nil {
		t.Fatalf("docker import: %v", err)
	}
}

// writeCerts makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, and another CA; it returns the server's certificate and key.
func (d *Dockerd) writeCerts() (serverCert, serverKey string) {
	t := d.t
	ca := NewCA(t, "between test CA")
	d.CA = filepath.Join(d.Dir, "ca.pem")
	ca.WriteCA(t, d.CA)
	d.OtherCA = filepath.Join(d.Dir, "other-ca.pem")
	NewCA(t, "another CA").WriteCA(t, d.OtherCA)
	serverCert, serverKey = filepath.Join(d.Dir, "server.pem"), filepath.Join(d.Dir, "server-key.pem")
	ca.Issue(t, "dockerd", false, serverCert, serverKey)
	d.Cert, d.Key = filepath.Join(d.Dir, "client.pem"), filepath.Join(d.Dir, "client-key.pem")
	ca.Issue(t, "between", true, d.Cert, d.Key)
	return serverCert, serverKey
}
