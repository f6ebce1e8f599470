package testpeers

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd is an etcd process started by a test on free loopback ports.
type Etcd struct {
	// URL is the client URL (http:// or, with TLS, https://127.0.0.1:PORT).
	URL string
	// CertDir holds ca.pem, server.pem, server-key.pem, client.pem and
	// client-key.pem (with TLS only).
	CertDir string
	// TLS is the client's TLS configuration (with TLS only): the CA and the
	// client certificate.
	TLS *tls.Config

	t      testing.TB
	dir    string   // data directory
	args   []string // command line, reused by Start
	mu     sync.Mutex
	cmd    *exec.Cmd
	out    *bytes.Buffer
	exited chan struct{}
}

// EtcdTLS asks StartEtcd for TLS: a CA, a server certificate for 127.0.0.1
// and, with ClientAuth, etcd requiring client certificates from that CA.
type EtcdTLS struct {
	// ClientAuth makes etcd require client certificates.
	ClientAuth bool
}

// StartEtcd runs etcd (Debian package etcd-server) on free loopback ports,
// with TLS when withTLS is not nil, and waits until it answers; it is stopped
// at the end of the test. Without etcd the test skips, or fails when CI=true.
func StartEtcd(t testing.TB, withTLS *EtcdTLS) *Etcd {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		Missing(t, "etcd not installed (Debian package etcd-server)")
	}
	s := &Etcd{t: t, dir: t.TempDir()}
	scheme := "http"
	if withTLS != nil {
		scheme = "https"
		s.CertDir = t.TempDir()
		ca := NewCA(t, "etcd test CA")
		ca.WriteCA(t, filepath.Join(s.CertDir, "ca.pem"))
		ca.Issue(t, "127.0.0.1", false, filepath.Join(s.CertDir, "server.pem"), filepath.Join(s.CertDir, "server-key.pem"))
		ca.Issue(t, "client", true, filepath.Join(s.CertDir, "client.pem"), filepath.Join(s.CertDir, "client-key.pem"))
		s.TLS = &tls.Config{RootCAs: ca.Pool}
		cert, err := tls.LoadX509KeyPair(filepath.Join(s.CertDir, "client.pem"), filepath.Join(s.CertDir, "client-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		s.TLS.Certificates = []tls.Certificate{cert}
	}
	for attempt := 1; ; attempt++ {
		client, peer := FreePort(t), FreePort(t)
		s.URL = fmt.Sprintf("%s://127.0.0.1:%d", scheme, client)
		peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
		s.args = []string{bin, "--name", "t", "--data-dir", filepath.Join(s.dir, "data"),
			"--listen-client-urls", s.URL, "--advertise-client-urls", s.URL,
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", "t=" + peerURL, "--log-level", "warn", "--logger", "zap"}
		if withTLS != nil {
			s.args = append(s.args, "--cert-file", filepath.Join(s.CertDir, "server.pem"),
				"--key-file", filepath.Join(s.CertDir, "server-key.pem"))
			if withTLS.ClientAuth {
				s.args = append(s.args, "--client-cert-auth", "--trusted-ca-file", filepath.Join(s.CertDir, "ca.pem"))
			}
		}
		if err := s.Start(); err == nil {
			break
		} else if attempt == 3 {
			t.Fatalf("etcd did not start: %v\n%s", err, s.Output())
		}
		os.RemoveAll(filepath.Join(s.dir, "data")) // a port was taken: new ports, new cluster
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("etcd output:\n%s", s.Output())
		}
	})
	return s
}

// Start runs the process (again after Stop or Kill: the same ports and data)
// and waits (15s at most) until it answers a read.
func (s *Etcd) Start() error {
	s.mu.Lock()
	s.cmd = exec.Command(s.args[0], s.args[1:]...)
	s.out = new(bytes.Buffer)
	s.cmd.Stdout, s.cmd.Stderr = lockedBuffer{&s.mu, s.out}, lockedBuffer{&s.mu, s.out}
	s.exited = make(chan struct{})
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() { cmd.Wait(); close(exited) }()
	cli := s.Client()
	defer cli.Close()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := cli.Get(ctx, "ready")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("etcd exited: %v", cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.Stop()
	return fmt.Errorf("etcd at %s did not answer within 15s", s.URL)
}

// Stop ends the process (SIGTERM to its PID, then SIGKILL after 5s) and
// waits for it.
func (s *Etcd) Stop() {
	s.end(syscall.SIGTERM)
}

// Kill ends the process with SIGKILL and waits for it.
func (s *Etcd) Kill() {
	s.end(syscall.SIGKILL)
}

func (s *Etcd) end(sig syscall.Signal) {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// Output returns the last 40 lines of the process's output since its last
// start.
func (s *Etcd) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out == nil {
		return ""
	}
	return tail(s.out.String(), 40)
}

type lockedBuffer struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// Client is a client for the test's own reads and writes (as user auth[0]
// with password auth[1] when given, with the client certificate under TLS);
// the caller closes it.
func (s *Etcd) Client(auth ...string) *clientv3.Client {
	cfg := clientv3.Config{Endpoints: []string{s.URL}, DialTimeout: 5 * time.Second, TLS: s.TLS, Logger: zap.NewNop()}
	if len(auth) == 2 {
		cfg.Username, cfg.Password = auth[0], auth[1]
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	return cli
}

// EtcdPut writes key through cli with a 5s deadline and returns the
// revision; an error fails the test.
func EtcdPut(t testing.TB, cli *clientv3.Client, key, value string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Put(ctx, key, value)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

// EtcdDel deletes key through cli with a 5s deadline; an error fails the
// test.
func EtcdDel(t testing.TB, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
}
