// Command bazelprog is a GOCACHEPROG client for bazel-remote's HTTP cache, written for
// bench/compare.py: bazel-remote has no GOCACHEPROG client of its own, and the benchmark puts
// it beside `goremotecache serve` under `go build std`.
//
//	GOCACHEPROG="bazelprog -dir DIR -url http://127.0.0.1:PORT" go build std
//
// It is the same simple shape as the peers (go-cache-plugin, cacheprog, gobuildcache): a local
// directory in front, the store behind it.
//
//   - get: the local directory first (DIR/a/<action hex> holds "<output hex> <size> <unix
//     nanos>", DIR/o/<output hex> the body). On a local miss, GET /ac/<action hex> (the same
//     text, stored by bazel-remote as is: run it with --disable_http_ac_validation), then GET
//     /cas/<output hex> (the body: the go command's output ID is the SHA-256 of the body, so it
//     is a valid CAS key). Both are written locally and the get is a hit. Any error or non-200
//     answer from the store is a miss: the go command then builds and puts.
//   - put: the body is written locally and answered at once; the upload (PUT /cas/ then PUT
//     /ac/, so an action never names a missing body) goes on a bounded queue served by
//     -uploads workers. A put that finds the queue full is not uploaded (counted), as
//     bazel-remote itself drops uploads under load.
//   - close: waits for the queue to drain, then answers.
//
// Requests are handled concurrently (one goroutine each, at most -parallel at a time), and one
// mutex owns stdout. Counts go to stderr at close.
package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// request and response are the go command's cacheprog.Request and cacheprog.Response
// (cmd/go/internal/cacheprog), with the fields this program uses.
type request struct {
	ID       int64
	Command  string
	ActionID []byte `json:",omitempty"`
	OutputID []byte `json:",omitempty"`
	BodySize int64  `json:",omitempty"`
}

type response struct {
	ID            int64
	Err           string     `json:",omitempty"`
	KnownCommands []string   `json:",omitempty"`
	Miss          bool       `json:",omitempty"`
	OutputID      []byte     `json:",omitempty"`
	Size          int64      `json:",omitempty"`
	Time          *time.Time `json:",omitempty"`
	DiskPath      string     `json:",omitempty"`
}

type upload struct {
	action, output string // hex
	meta           []byte // the /ac/ body
	body           string // local path of the body
}

type prog struct {
	dir    string
	url    string
	client *http.Client
	queue  chan upload
	wg     sync.WaitGroup // upload workers

	outMu sync.Mutex
	out   *bufio.Writer
	enc   *json.Encoder

	localHits, remoteHits, misses, puts, uploaded, dropped, uploadErrors atomic.Int64
}

func main() {
	dir := flag.String("dir", "", "the local directory (created if missing)")
	url := flag.String("url", "", "bazel-remote's HTTP address, e.g. http://127.0.0.1:8080")
	uploads := flag.Int("uploads", 16, "upload workers")
	queue := flag.Int("queue", 4096, "puts waiting for a worker beyond which a put is not uploaded")
	parallel := flag.Int("parallel", 64, "requests handled at once")
	flag.Parse()
	if *dir == "" || *url == "" {
		fmt.Fprintln(os.Stderr, "bazelprog: -dir and -url are required: give the local directory and bazel-remote's address")
		os.Exit(2)
	}
	root, err := filepath.Abs(*dir)
	for _, sub := range []string{"a", "o", "tmp"} {
		if err == nil {
			err = os.MkdirAll(filepath.Join(root, sub), 0o755)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bazelprog: %v\n", err)
		os.Exit(1)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = *parallel + *uploads
	p := &prog{
		dir:    root,
		url:    strings.TrimRight(*url, "/"),
		client: &http.Client{Transport: transport, Timeout: 2 * time.Minute},
		queue:  make(chan upload, *queue),
		out:    bufio.NewWriterSize(os.Stdout, 1<<16),
	}
	p.enc = json.NewEncoder(p.out)
	for i := 0; i < *uploads; i++ {
		p.wg.Add(1)
		go p.uploader()
	}
	if err := p.serve(os.Stdin, *parallel); err != nil {
		fmt.Fprintf(os.Stderr, "bazelprog: %v\n", err)
		os.Exit(1)
	}
}

func (p *prog) send(res *response) {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	// A write error means the go command has gone: nothing is left to answer.
	if p.enc.Encode(res) == nil {
		p.out.Flush()
	}
}

func (p *prog) serve(in io.Reader, parallel int) error {
	r := bufio.NewReaderSize(in, 1<<16)
	p.send(&response{KnownCommands: []string{"get", "put", "close"}})
	slots := make(chan struct{}, parallel)
	var handlers sync.WaitGroup
	for {
		line, err := r.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) == 0 {
			if err != nil {
				handlers.Wait()
				p.finish()
				if err == io.EOF {
					return nil
				}
				return err
			}
			continue
		}
		var req request
		if err := json.Unmarshal(line, &req); err != nil {
			return fmt.Errorf("bad request %q: %v", line, err)
		}
		switch req.Command {
		case "get":
			slots <- struct{}{}
			handlers.Add(1)
			go func() {
				defer func() { <-slots; handlers.Done() }()
				p.send(p.get(&req))
			}()
		case "put":
			body, err := readBody(r, req.BodySize)
			if err != nil {
				return err
			}
			slots <- struct{}{}
			handlers.Add(1)
			go func() {
				defer func() { <-slots; handlers.Done() }()
				p.send(p.put(&req, body))
			}()
		case "close":
			handlers.Wait()
			p.finish()
			p.send(&response{ID: req.ID})
			return nil
		default:
			p.send(&response{ID: req.ID, Err: fmt.Sprintf("unknown command %q", req.Command)})
		}
	}
}

// finish waits for every queued upload and reports the counts.
func (p *prog) finish() {
	close(p.queue)
	p.wg.Wait()
	fmt.Fprintf(os.Stderr, "bazelprog: %d local hits, %d remote hits, %d misses, %d puts, %d uploaded, %d not uploaded (queue full), %d upload errors\n",
		p.localHits.Load(), p.remoteHits.Load(), p.misses.Load(), p.puts.Load(), p.uploaded.Load(), p.dropped.Load(), p.uploadErrors.Load())
}

func (p *prog) get(req *request) *response {
	action := hex.EncodeToString(req.ActionID)
	metaPath := filepath.Join(p.dir, "a", action)
	if meta, err := os.ReadFile(metaPath); err == nil {
		if res, ok := p.answer(req.ID, meta); ok {
			p.localHits.Add(1)
			return res
		}
	}
	meta, err := p.fetch("/ac/" + action)
	if err != nil {
		p.misses.Add(1)
		return &response{ID: req.ID, Miss: true}
	}
	output, size, _, err := parseMeta(meta)
	if err != nil {
		p.misses.Add(1)
		return &response{ID: req.ID, Miss: true}
	}
	var body []byte
	if size > 0 {
		if body, err = p.fetch("/cas/" + output); err != nil || int64(len(body)) != size {
			p.misses.Add(1)
			return &response{ID: req.ID, Miss: true}
		}
	}
	if err := p.writeFile(filepath.Join(p.dir, "o", output), body, true); err != nil {
		return &response{ID: req.ID, Err: err.Error()}
	}
	if err := p.writeFile(metaPath, meta, false); err != nil {
		return &response{ID: req.ID, Err: err.Error()}
	}
	res, ok := p.answer(req.ID, meta)
	if !ok {
		return &response{ID: req.ID, Miss: true}
	}
	p.remoteHits.Add(1)
	return res
}

// answer is a hit for an entry whose metadata and body are in the local directory.
func (p *prog) answer(id int64, meta []byte) (*response, bool) {
	output, size, when, err := parseMeta(meta)
	if err != nil {
		return nil, false
	}
	path := filepath.Join(p.dir, "o", output)
	if st, err := os.Stat(path); err != nil || st.Size() != size {
		return nil, false
	}
	outputID, _ := hex.DecodeString(output)
	return &response{ID: id, OutputID: outputID, Size: size, Time: &when, DiskPath: path}, true
}

func (p *prog) put(req *request, body []byte) *response {
	p.puts.Add(1)
	action, output := hex.EncodeToString(req.ActionID), hex.EncodeToString(req.OutputID)
	bodyPath := filepath.Join(p.dir, "o", output)
	if err := p.writeFile(bodyPath, body, true); err != nil {
		return &response{ID: req.ID, Err: err.Error()}
	}
	meta := []byte(fmt.Sprintf("%s %d %d\n", output, len(body), time.Now().UnixNano()))
	if err := p.writeFile(filepath.Join(p.dir, "a", action), meta, false); err != nil {
		return &response{ID: req.ID, Err: err.Error()}
	}
	select {
	case p.queue <- upload{action: action, output: output, meta: meta, body: bodyPath}:
	default:
		p.dropped.Add(1)
	}
	return &response{ID: req.ID, DiskPath: bodyPath}
}

func (p *prog) uploader() {
	defer p.wg.Done()
	for u := range p.queue {
		body, err := os.ReadFile(u.body)
		if err == nil {
			err = p.store("/cas/"+u.output, body)
		}
		if err == nil {
			err = p.store("/ac/"+u.action, u.meta)
		}
		if err != nil {
			p.uploadErrors.Add(1)
			fmt.Fprintf(os.Stderr, "bazelprog: upload of %s: %v\n", u.action, err)
			continue
		}
		p.uploaded.Add(1)
	}
}

func (p *prog) fetch(path string) ([]byte, error) {
	res, err := p.client.Get(p.url + path)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		io.Copy(io.Discard, res.Body)
		return nil, fmt.Errorf("GET %s: %s", path, res.Status)
	}
	return io.ReadAll(res.Body)
}

func (p *prog) store(path string, body []byte) error {
	req, err := http.NewRequest(http.MethodPut, p.url+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.ContentLength = int64(len(body))
	res, err := p.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("PUT %s: %s", path, res.Status)
	}
	return nil
}

// writeFile writes through a temporary file and a rename, so a reader sees a whole file or
// none. A body (keep=true) already there is the same bytes under the same ID: left alone.
func (p *prog) writeFile(path string, data []byte, keep bool) error {
	if keep {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
	}
	f, err := os.CreateTemp(filepath.Join(p.dir, "tmp"), "w-")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// parseMeta reads "<output hex> <size> <unix nanos>".
func parseMeta(meta []byte) (output string, size int64, when time.Time, err error) {
	f := strings.Fields(string(meta))
	if len(f) != 3 {
		return "", 0, time.Time{}, errors.New("bad action entry")
	}
	if _, err := hex.DecodeString(f[0]); err != nil {
		return "", 0, time.Time{}, err
	}
	size, err = strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return "", 0, time.Time{}, err
	}
	nanos, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return "", 0, time.Time{}, err
	}
	return f[0], size, time.Unix(0, nanos), nil
}

// readBody reads the body that follows a put request: the next line that is not blank (the go
// command ends the request with a blank line), a JSON string of base64.
func readBody(r *bufio.Reader, size int64) ([]byte, error) {
	if size == 0 {
		return nil, nil
	}
	var line []byte
	for len(bytes.TrimSpace(line)) == 0 {
		var err error
		line, err = r.ReadBytes('\n')
		if err != nil && (err != io.EOF || len(line) == 0) {
			return nil, fmt.Errorf("reading a put body: %v", err)
		}
	}
	var body []byte
	if err := json.Unmarshal(line, &body); err != nil {
		return nil, fmt.Errorf("bad put body: %v", err)
	}
	if int64(len(body)) != size {
		return nil, fmt.Errorf("put body has %d bytes, its request said %d", len(body), size)
	}
	return body, nil
}
