// resolve_model and `lmtune manage` against a fake Hub (cpp-httplib on 127.0.0.1, a free port) that
// serves the Hub API, resolve/ with X-Linked-Etag redirects to a "CDN", gated/missing repos, a
// corrupt blob and a connection cut mid-file. No test touches the real network.
#include <gtest/gtest.h>
#include <httplib.h>
#include <openssl/evp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "core/error.h"
#include "fake_hub.h"
#include "io/hub.h"

namespace fs = std::filesystem;
using lmtune::resolve_model;

namespace {

using namespace fake_hub;

std::string error_of(const std::string& spec) {
  try {
    resolve_model(spec);
  } catch (const lmtune::Error& e) {
    std::printf("error for %s: %s\n", spec.c_str(), e.what());  // the message users see, in the test log
    return e.what();
  }
  return "(no error)";
}

class Hub : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lmtune-hub-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    cache_ = root_ + "/hub";
    for (const char* v :
         {"HF_HOME", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH"})
      ::unsetenv(v);
    ::setenv("HF_HOME", (root_ + "/home").c_str(), 1);  // no token file from the real home
    ::setenv("HF_HUB_CACHE", cache_.c_str(), 1);
    ::setenv("HF_ENDPOINT", ("http://127.0.0.1:" + std::to_string(hub_.port())).c_str(), 1);
  }
  void TearDown() override { fs::remove_all(root_); }

  fs::path repo_dir(const std::string& folder) { return fs::path(cache_) / folder; }
  std::string sha_of(const std::string& repo, const std::string& file) {
    return sha256(hub_.repo(repo).revisions.at("main").files.at(file).content);
  }

  FakeHub hub_;
  std::string root_, cache_;
};

TEST_F(Hub, LocalFoldersAndPathsPassThrough) {
  EXPECT_EQ(resolve_model(root_), root_);
  EXPECT_EQ(resolve_model("/no/such/dir"), "/no/such/dir");
  EXPECT_EQ(resolve_model("./relative/dir"), "./relative/dir");
  EXPECT_EQ(resolve_model("a/b/c"), "a/b/c");
  EXPECT_TRUE(lmtune::is_hub_repo_id("mlx-community/Qwen2.5-0.5B-Instruct-4bit"));
  EXPECT_FALSE(lmtune::is_hub_repo_id("org--x/y"));
  EXPECT_FALSE(lmtune::is_hub_repo_id("single"));
  EXPECT_EQ(lmtune::hub_repo_folder_name("org/name"), "models--org--name");
  EXPECT_TRUE(lmtune::hub_file_needed("model-00001-of-00002.safetensors"));
  EXPECT_TRUE(lmtune::hub_file_needed("sub/x.json"));
  EXPECT_TRUE(lmtune::hub_file_needed("tokenizer.model"));
  EXPECT_FALSE(lmtune::hub_file_needed("modeling_x.py"));
  EXPECT_FALSE(lmtune::hub_file_needed("pytorch_model.bin"));
  EXPECT_FALSE(lmtune::hub_file_needed("README.md"));
  EXPECT_EQ(hub_.requests().size(), 0u);
}

TEST_F(Hub, DownloadMakesHuggingfaceHubLayout) {
  std::string snap = resolve_model("org/tiny");
  fs::path repo = repo_dir("models--org--tiny");
  EXPECT_EQ(snap, (repo / "snapshots" / kMain).string());
  EXPECT_EQ(read_file(repo / "refs" / "main"), kMain);  // exactly the hash, no newline
  const Revision& rev = hub_.repo("org/tiny").revisions.at("main");
  std::string w = sha_of("org/tiny", "model.safetensors");
  EXPECT_EQ(fs::read_symlink(repo / "snapshots" / kMain / "model.safetensors").string(), "../../blobs/" + w);
  EXPECT_EQ(fs::read_symlink(repo / "snapshots" / kMain / "config.json").string(),
            "../../blobs/" + sha256(kConfig).substr(0, 40));
  EXPECT_EQ(fs::read_symlink(repo / "snapshots" / kMain / "configs/generation.json").string(),
            "../../../blobs/" + sha256(rev.files.at("configs/generation.json").content).substr(0, 40));
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "configs/generation.json"})
    EXPECT_EQ(read_file(fs::path(snap) / f), rev.files.at(f).content) << f;
  EXPECT_FALSE(fs::exists(fs::path(snap) / "README.md"));
  EXPECT_FALSE(fs::exists(fs::path(snap) / "modeling_tiny.py"));
  EXPECT_EQ(hub_.count("", "README.md") + hub_.count("", ".py"), 0);
  for (const auto& e : fs::directory_iterator(repo / "blobs"))
    EXPECT_EQ(e.path().extension(), "") << "left over: " << e.path();
  EXPECT_EQ(hub_.count("GET", "/cdn/"), 1);
}

TEST_F(Hub, CacheHitMakesNoDownload) {
  std::string a = resolve_model("org/tiny");
  hub_.clear();
  std::string b = resolve_model("org/tiny");
  EXPECT_EQ(a, b);
  EXPECT_EQ(hub_.count("GET", "/api/models/"), 1);  // only the revision -> commit lookup
  EXPECT_EQ(hub_.count("", "/resolve/"), 0);
  EXPECT_EQ(hub_.count("", "/cdn/"), 0);
}

TEST_F(Hub, OfflineUsesTheCacheOrFailsClearly) {
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  std::string e = error_of("org/tiny");
  EXPECT_NE(e.find("not in the cache"), std::string::npos) << e;
  EXPECT_NE(e.find("HF_HUB_OFFLINE"), std::string::npos) << e;
  ::unsetenv("HF_HUB_OFFLINE");
  std::string online = resolve_model("org/tiny");
  hub_.clear();
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  EXPECT_EQ(resolve_model("org/tiny"), online);
  EXPECT_EQ(resolve_model("org/tiny@" + kMain), online);
  EXPECT_NE(error_of("org/tiny@v1").find("not in the cache"), std::string::npos);
  EXPECT_EQ(hub_.requests().size(), 0u);
}

// A refs/main holding a path would make the snapshot folder <repo>/snapshots/../../.. : refused,
// naming the file, online-fallback and offline alike.
TEST_F(Hub, CachedRefThatIsAPathIsRefused) {
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  fs::path repo = repo_dir("models--org--evil");
  fs::create_directories(repo / "refs");
  fs::create_directories(repo / "snapshots");
  fs::create_directories(fs::path(root_) / "outside");
  std::ofstream(fs::path(root_) / "outside" / "config.json") << "{}";
  for (const std::string& target :
       std::vector<std::string>{"../../..", "../../../outside", root_ + "/outside", "abc/../../.."}) {
    std::ofstream(repo / "refs" / "main") << target << "\n";
    std::string e = error_of("org/evil");
    EXPECT_NE(e.find("refs/main holds"), std::string::npos) << target << ": " << e;
    EXPECT_NE(e.find("not a commit hash"), std::string::npos) << target << ": " << e;
  }
  // a plain commit name still resolves
  std::string commit(40, 'a');
  fs::create_directories(repo / "snapshots" / commit);
  std::ofstream(repo / "snapshots" / commit / "config.json") << "{}";
  std::ofstream(repo / "refs" / "main") << commit;
  EXPECT_EQ(fs::path(resolve_model("org/evil")).filename().string(), commit);
}

// A listing that names a file outside the repo is refused before anything is downloaded: nothing
// lands outside the cache (issue 13).
TEST_F(Hub, ListingWithPathTraversalIsRefused) {
  for (const std::string repo : {"org/dots", "org/absolute", "org/inner-dots"}) {
    std::string e = error_of(repo);
    EXPECT_NE(e.find("lists a file named"), std::string::npos) << repo << ": " << e;
    EXPECT_NE(e.find("not a relative path inside the repo"), std::string::npos) << repo << ": " << e;
  }
  EXPECT_EQ(hub_.count("", "/resolve/"), 0);  // not one file fetched
  EXPECT_FALSE(fs::exists(fs::path(root_) / "etc"));
  EXPECT_FALSE(fs::exists("/tmp/lmtune-absolute.json"));
  EXPECT_FALSE(fs::exists(fs::path(cache_).parent_path() / "x.json"));
}

// A snapshot whose files (or the snapshot folder itself) link out of the cache is refused, offline
// and online; huggingface_hub's links all end in the repo's blobs/.
TEST_F(Hub, SnapshotLinkingOutOfTheCacheIsRefused) {
  fs::path outside = fs::path(root_) / "outside";
  fs::create_directories(outside);
  std::ofstream(outside / "config.json") << "{}";
  fs::path repo = repo_dir("models--org--tiny");
  fs::create_directories(repo / "refs");
  std::ofstream(repo / "refs" / "main") << kMain;
  fs::path snap = repo / "snapshots" / kMain;
  fs::create_directories(snap);
  fs::create_symlink(outside / "config.json", snap / "config.json");
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  std::string e = error_of("org/tiny");
  EXPECT_NE(e.find("outside the cache"), std::string::npos) << e;
  ::unsetenv("HF_HUB_OFFLINE");
  e = error_of("org/tiny");
  EXPECT_NE(e.find("outside the cache"), std::string::npos) << e;
  EXPECT_EQ(read_file(outside / "config.json"), "{}");  // not overwritten through the link
  fs::remove_all(snap);
  fs::create_directory_symlink(outside, snap);
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  e = error_of("org/tiny");
  EXPECT_NE(e.find("is a symbolic link"), std::string::npos) << e;
}

// A CDN that sends more than the announced size is cut off there, and the partial blob deleted.
TEST_F(Hub, DownloadPastTheAnnouncedSizeIsStopped) {
  std::string e = error_of("org/oversized");
  EXPECT_NE(e.find("sent more than the"), std::string::npos) << e;
  std::string h = sha_of("org/oversized", "model.safetensors");
  EXPECT_FALSE(fs::exists(repo_dir("models--org--oversized") / "blobs" / (h + ".incomplete")));
  EXPECT_FALSE(fs::exists(repo_dir("models--org--oversized") / "blobs" / h));
}

TEST_F(Hub, NetworkFailureSaysOfflineModeOrFallsBackToCache) {
  ::setenv("HF_ENDPOINT", "http://127.0.0.1:1", 1);  // nothing listens on port 1
  std::string e = error_of("org/tiny");
  EXPECT_NE(e.find("HF_HUB_OFFLINE=1"), std::string::npos) << e;
  ::setenv("HF_ENDPOINT", ("http://127.0.0.1:" + std::to_string(hub_.port())).c_str(), 1);
  std::string online = resolve_model("org/tiny");
  ::setenv("HF_ENDPOINT", "http://127.0.0.1:1", 1);
  EXPECT_EQ(resolve_model("org/tiny"), online);
}

TEST_F(Hub, ResumesAfterACutConnection) {
  hub_.cut_next_downloads(1);
  std::string snap = resolve_model("org/cut");
  std::string want = hub_.repo("org/cut").revisions.at("main").files.at("model.safetensors").content;
  EXPECT_EQ(sha256(read_file(fs::path(snap) / "model.safetensors")), sha256(want));
  std::vector<Request> gets;
  for (const Request& q : hub_.requests())
    if (q.path.find("/cdn/") != std::string::npos && q.method == "GET") gets.push_back(q);
  ASSERT_EQ(gets.size(), 2u);
  EXPECT_EQ(gets[0].range, "");
  EXPECT_EQ(gets[1].range, "bytes=" + std::to_string(want.size() * 2 / 5) + "-");
}

// A connection cut at every transfer: each retry is announced with its number, up to the last of
// the 5 (not "attempt 6 of 5"), then the error keeps the partial file for the next run.
TEST_F(Hub, GivesUpAfterTheLastAttempt) {
  hub_.cut_next_downloads(100);
  testing::internal::CaptureStderr();
  std::string e = error_of("org/cut");
  std::string log = testing::internal::GetCapturedStderr();
  std::printf("%s", log.c_str());
  EXPECT_NE(e.find("failed after 5 attempts"), std::string::npos) << e;
  EXPECT_NE(e.find("run again to resume"), std::string::npos) << e;
  for (int k = 2; k <= 5; ++k)
    EXPECT_NE(log.find("(attempt " + std::to_string(k) + " of 5)"), std::string::npos) << k << "\n" << log;
  EXPECT_EQ(log.find("attempt 6"), std::string::npos) << log;
  EXPECT_EQ(log.find("attempt 1 "), std::string::npos) << log;
  EXPECT_EQ(hub_.count("GET", "/cdn/"), 5);
}

TEST_F(Hub, ResumesAPartialFileLeftByAnEarlierRun) {
  std::string want = hub_.repo("org/cut").revisions.at("main").files.at("model.safetensors").content;
  fs::path blobs = repo_dir("models--org--cut") / "blobs";
  fs::create_directories(blobs);
  std::ofstream(blobs / (sha256(want) + ".incomplete"), std::ios::binary) << want.substr(0, 1000);
  std::string snap = resolve_model("org/cut");
  EXPECT_EQ(read_file(fs::path(snap) / "model.safetensors"), want);
  EXPECT_EQ(hub_.count("GET", "/cdn/"), 1);
  for (const Request& q : hub_.requests()) {
    if (q.path.find("/cdn/") != std::string::npos) {
      EXPECT_EQ(q.range, "bytes=1000-");
    }
  }
}

TEST_F(Hub, GatedRepoNeedsAToken) {
  std::string e = error_of("org/gated");
  EXPECT_NE(e.find("401"), std::string::npos) << e;
  EXPECT_NE(e.find("HF_TOKEN"), std::string::npos) << e;
  EXPECT_NE(e.find("gated"), std::string::npos) << e;
  ::setenv("HF_TOKEN", "secret", 1);
  std::string snap = resolve_model("org/gated");
  EXPECT_TRUE(fs::is_regular_file(fs::path(snap) / "model.safetensors"));
}

TEST_F(Hub, MissingRepoAndRevisionAre404) {
  ::setenv("HF_TOKEN", "any", 1);
  std::string e = error_of("org/nope");
  EXPECT_NE(e.find("not found"), std::string::npos) << e;
  e = error_of("org/tiny@nope");
  EXPECT_NE(e.find("revision 'nope' not found"), std::string::npos) << e;
  ::unsetenv("HF_TOKEN");
  e = error_of("org/nope");  // anonymous: the Hub answers 401 for a repo it will not show
  EXPECT_NE(e.find("does not exist, or it is private or gated"), std::string::npos) << e;
}

TEST_F(Hub, CorruptDownloadIsRefusedAndRemoved) {
  std::string e = error_of("org/corrupt");
  EXPECT_NE(e.find("SHA-256 mismatch"), std::string::npos) << e;
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
  std::string h = sha_of("org/corrupt", "model.safetensors");
  fs::path repo = repo_dir("models--org--corrupt");
  EXPECT_FALSE(fs::exists(repo / "blobs" / h));
  EXPECT_FALSE(fs::exists(repo / "blobs" / (h + ".incomplete")));
  EXPECT_FALSE(fs::exists(repo / "snapshots" / kMain / "model.safetensors"));
  EXPECT_FALSE(fs::exists(repo / "refs" / "main"));  // the snapshot is incomplete: main is not recorded
}

TEST_F(Hub, RevisionSelection) {
  std::string main = resolve_model("org/tiny");
  std::string v1 = resolve_model("org/tiny@v1");
  fs::path repo = repo_dir("models--org--tiny");
  EXPECT_EQ(v1, (repo / "snapshots" / kV1).string());
  EXPECT_EQ(read_file(repo / "refs" / "v1"), kV1);
  EXPECT_NE(read_file(fs::path(v1) / "config.json").find("\"revision\": \"v1\""), std::string::npos);
  EXPECT_EQ(read_file(fs::path(main) / "config.json"), kConfig);
  EXPECT_EQ(hub_.count("GET", "/cdn/"), 1);  // the weights blob is shared by both snapshots
  EXPECT_EQ(resolve_model("org/tiny@" + kV1), v1);
  EXPECT_FALSE(fs::exists(repo / "refs" / kV1));  // a commit is not a ref
}

// The fake repo's model.safetensors is random bytes: inspect resolves the id, prints the config,
// then refuses the weights file (it used to list the config's tensors as if the file were fine).
TEST_F(Hub, InspectResolvesHubIds) {
  std::string out;
  EXPECT_NE(run(std::string(LMTUNE_BIN) + " inspect --model org/tiny 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("model_type llama"), std::string::npos) << out;
  EXPECT_NE(out.find("[safetensors]"), std::string::npos) << out;
  EXPECT_NE(out.find(kMain + "/model.safetensors"), std::string::npos) << out;
}

TEST_F(Hub, ManageScanAndDelete) {
  resolve_model("org/tiny");
  resolve_model("org/tiny@v1");
  ::setenv("HF_TOKEN", "secret", 1);
  resolve_model("org/gated");
  std::string out;
  ASSERT_EQ(run(std::string(LMTUNE_BIN) + " manage --scan", &out), 0) << out;
  std::printf("%s", out.c_str());
  EXPECT_NE(out.find("REPO ID"), std::string::npos) << out;
  EXPECT_NE(out.find("org/tiny"), std::string::npos) << out;
  EXPECT_NE(out.find("org/gated"), std::string::npos) << out;
  EXPECT_NE(out.find("main, v1, 11111111, 22222222"), std::string::npos) << out;
  EXPECT_NE(out.find("Found 2 model repo(s)"), std::string::npos) << out;
  std::vector<lmtune::CachedRepo> repos = lmtune::scan_hub_cache(cache_);
  ASSERT_EQ(repos.size(), 2u);
  EXPECT_EQ(repos[1].repo_id, "org/tiny");
  EXPECT_EQ(repos[1].n_files, 5);  // 2 configs + weights + tokenizer + generation config
  EXPECT_GT(repos[1].size_on_disk, 300000u);

  out.clear();
  ASSERT_EQ(run("echo n | " + std::string(LMTUNE_BIN) + " manage --delete --pattern tiny", &out), 0) << out;
  EXPECT_NE(out.find("Nothing deleted"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(repo_dir("models--org--tiny")));
  out.clear();
  ASSERT_EQ(run("echo y | " + std::string(LMTUNE_BIN) + " manage --delete --pattern tiny", &out), 0) << out;
  EXPECT_NE(out.find("Deleted org/tiny"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(repo_dir("models--org--tiny")));
  EXPECT_TRUE(fs::exists(repo_dir("models--org--gated")));
  out.clear();
  ASSERT_EQ(run(std::string(LMTUNE_BIN) + " manage --scan --pattern 'org/*'", &out), 0) << out;
  EXPECT_NE(out.find("Found 1 model repo(s)"), std::string::npos) << out;
}

TEST_F(Hub, HuggingfaceHubFindsOurFiles) {
  std::string py = LMTUNE_PYTHON;
  std::string out;
  if (py.empty() || run(py + " -c 'import huggingface_hub' 2>/dev/null", &out) != 0)
    GTEST_SKIP() << "no huggingface_hub in " << py;
  std::string snap = resolve_model("org/tiny");
  resolve_model("org/tiny@v1");
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  std::string script =
      "from huggingface_hub import try_to_load_from_cache, snapshot_download, scan_cache_dir\n"
      "import sys\n"
      "p = try_to_load_from_cache('org/tiny', 'model.safetensors')\n"
      "q = try_to_load_from_cache('org/tiny', 'config.json', revision='v1')\n"
      "s = snapshot_download('org/tiny', allow_patterns=['*.json', 'model*.safetensors'])\n"
      "info = scan_cache_dir()\n"
      "r = [r for r in info.repos if r.repo_id == 'org/tiny'][0]\n"
      "print(p); print(q); print(s); print(sorted(r.refs)); print(r.nb_files)\n";
  std::ofstream(root_ + "/check.py") << script;
  ASSERT_EQ(run(py + " " + root_ + "/check.py", &out), 0) << out;
  EXPECT_NE(out.find(snap + "/model.safetensors\n"), std::string::npos) << out;
  EXPECT_NE(out.find("/snapshots/" + kV1 + "/config.json\n"), std::string::npos) << out;
  EXPECT_NE(out.find(snap + "\n"), std::string::npos) << out;
  EXPECT_NE(out.find("['main', 'v1']"), std::string::npos) << out;
}

}  // namespace
