// `lmtune convert` and `lmtune fuse` with --upload-repo against the fake Hub (tests/hub/fake_hub.h):
// the repo is created, *.safetensors go through preupload + the LFS batch API + PUT + verify, the
// rest inline in one ndjson commit; the repo is then downloaded back with resolve_model and every
// file compared byte for byte with the local folder. Also: a second upload of the same weights
// sends no LFS bytes, the token file, no token, a wrong token, an unreachable endpoint.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>

#include "fake_hub.h"
#include "io/hub.h"

namespace fs = std::filesystem;
using namespace fake_hub;

namespace {

const std::string kBin = LMTUNE_BIN;
const std::string kRoot = LMTUNE_ROOT;

// Every regular file under dir, by its '/'-separated relative path.
std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[e.path().lexically_relative(dir).generic_string()] = read_file(e.path());
  return out;
}

class HubUpload : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lmtune-upload-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    for (const char* v :
         {"HF_HOME", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH"})
      ::unsetenv(v);
    ::setenv("HF_HOME", (root_ + "/home").c_str(), 1);  // no token file from the real home
    ::setenv("HF_HUB_CACHE", (root_ + "/hub").c_str(), 1);
    ::setenv("HF_ENDPOINT", ("http://127.0.0.1:" + std::to_string(hub_.port())).c_str(), 1);
  }
  void TearDown() override { fs::remove_all(root_); }

  int lmtune(const std::string& args, std::string* out) { return run(kBin + " " + args + " 2>&1", out); }
  std::string convert_args(const std::string& out) {
    return "convert --hf-path " + kRoot + "/models/default --mlx-path " + root_ + "/" + out + " -q";
  }

  // The repo on the fake Hub holds exactly the folder's files, and resolve_model brings back the
  // files a model needs, byte for byte.
  void expect_round_trip(const std::string& repo, const fs::path& folder) {
    std::map<std::string, std::string> local = files_of(folder);
    auto has_weights = [](const std::map<std::string, std::string>& files) {
      for (const auto& [name, bytes] : files)
        if (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors") return true;
      return false;
    };
    ASSERT_TRUE(has_weights(local) && local.count("config.json"));
    const Revision& main = hub_.repo(repo).revisions.at("main");
    std::set<std::string> names;
    for (const auto& [name, f] : main.files) {
      names.insert(name);
      ASSERT_TRUE(local.count(name)) << name << " is on the Hub but not in " << folder;
      EXPECT_TRUE(f.content == local[name]) << name << " on the Hub differs from the local file";
      EXPECT_EQ(f.lfs, name.size() > 12 && name.substr(name.size() - 12) == ".safetensors") << name;
    }
    EXPECT_EQ(names.size(), local.size());
    std::string snap = lmtune::resolve_model(repo);
    std::map<std::string, std::string> back = files_of(snap);
    EXPECT_TRUE(has_weights(back) && back.count("config.json") && back.count("tokenizer.json"));
    for (const auto& [name, bytes] : local)  // the files a model needs all came back
      EXPECT_TRUE(back.count(name) || !lmtune::hub_file_needed(name)) << name << " was not downloaded";
    for (const auto& [name, bytes] : back) EXPECT_TRUE(bytes == local[name]) << "downloaded " << name << " differs";
  }

  FakeHub hub_;
  std::string root_;
};

TEST_F(HubUpload, ConvertAndFuseUploadAndDownloadBack) {
  ::setenv("HF_TOKEN", "secret", 1);
  std::string out;
  ASSERT_EQ(lmtune(convert_args("q4") + " --upload-repo me/q4", &out), 0) << out;
  std::printf("%s", out.c_str());
  EXPECT_NE(out.find("Upload successful, go to http://127.0.0.1:" + std::to_string(hub_.port()) + "/me/q4"),
            std::string::npos);
  EXPECT_EQ(hub_.count("POST", "/api/repos/create"), 1);
  EXPECT_EQ(hub_.count("POST", "/api/models/me/q4/preupload/main"), 1);
  EXPECT_EQ(hub_.count("POST", "/me/q4.git/info/lfs/objects/batch"), 1);
  EXPECT_EQ(hub_.count("PUT", "/lfs-put/"), 1);  // model.safetensors
  EXPECT_EQ(hub_.count("POST", "/lfs-verify"), 1);
  EXPECT_EQ(hub_.count("POST", "/api/models/me/q4/commit/main"), 1);
  expect_round_trip("me/q4", root_ + "/q4");

  // fuse: an adapter of one short step on the 4-bit folder, fused and uploaded.
  const std::string ad = root_ + "/adapters";
  ASSERT_EQ(lmtune("lora --model " + root_ + "/q4 --train --data " + kRoot +
                       "/examples/data --iters 2 --batch-size 2 --num-layers 1 --device cpu --steps-per-eval 1000 "
                       "--val-batches 1 --adapter-path " +
                       ad,
                   &out),
            0)
      << out;
  out.clear();
  ASSERT_EQ(lmtune("fuse --model " + root_ + "/q4 --adapter-path " + ad + " --save-path " + root_ +
                       "/fused --upload-repo me/fused",
                   &out),
            0)
      << out;
  std::printf("%s", out.c_str());
  expect_round_trip("me/fused", root_ + "/fused");
  std::vector<std::string> msgs = hub_.commit_messages();
  ASSERT_EQ(msgs.size(), 2u);
  EXPECT_EQ(msgs[0], "Upload model converted with lmtune");
  EXPECT_EQ(msgs[1], "Upload fused model with lmtune");
}

TEST_F(HubUpload, SecondUploadToAnExistingRepoSendsNoKnownLfsObject) {
  ::setenv("HF_TOKEN", "secret", 1);
  std::string out;
  ASSERT_EQ(lmtune(convert_args("a") + " --upload-repo me/same", &out), 0) << out;
  hub_.clear();
  out.clear();
  ASSERT_EQ(lmtune(convert_args("b") + " --upload-repo me/same", &out), 0) << out;  // the repo exists: 409
  EXPECT_EQ(hub_.count("POST", "/api/repos/create"), 1);
  EXPECT_EQ(hub_.count("PUT", ""), 0) << "identical weights were sent again";
  EXPECT_NE(out.find("(1 through LFS, 0 sent)"), std::string::npos) << out;
  expect_round_trip("me/same", root_ + "/b");
}

TEST_F(HubUpload, ShardedFolderSendsEveryShardThroughLfs) {
  ::setenv("HF_TOKEN", "secret", 1);
  std::string out;
  ASSERT_EQ(lmtune(convert_args("s") + " --max-shard-size 800000 --upload-repo me/sharded", &out), 0) << out;
  int shards = 0;
  for (const auto& [name, bytes] : files_of(root_ + "/s")) shards += name.rfind("model-0000", 0) == 0;
  EXPECT_GE(shards, 2) << out;
  EXPECT_EQ(hub_.count("PUT", "/lfs-put/"), shards);
  EXPECT_EQ(hub_.count("POST", "/lfs-verify"), shards);
  EXPECT_EQ(hub_.count("POST", "/me/sharded.git/info/lfs/objects/batch"), 1);  // one batch for all
  expect_round_trip("me/sharded", root_ + "/s");
}

TEST_F(HubUpload, RefusedCommitNamesTheStepAndKeepsTheFolder) {
  ::setenv("HF_TOKEN", "secret", 1);
  hub_.refuse_next_commit("Your push was rejected because it contains binary files");
  std::string out;
  EXPECT_NE(lmtune(convert_args("r") + " --upload-repo me/r", &out), 0);
  std::printf("%s", out.c_str());
  EXPECT_NE(out.find("the commit for me/r failed: HTTP 422 for http://127.0.0.1:" + std::to_string(hub_.port()) +
                     "/api/models/me/r/commit/main: Your push was rejected"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("The model is kept in " + root_ + "/r"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(root_ + "/r/model.safetensors"));
  EXPECT_EQ(hub_.repo("me/r").revisions.count("main"), 0u);  // nothing committed
}

TEST_F(HubUpload, FilesTheHubIgnoresAreLeftOut) {
  ::setenv("HF_TOKEN", "secret", 1);
  hub_.ignore_path("README.md");
  std::string out;
  ASSERT_EQ(lmtune(convert_args("i") + " --upload-repo me/i", &out), 0) << out;
  const auto& files = hub_.repo("me/i").revisions.at("main").files;
  EXPECT_EQ(files.count("README.md"), 0u);
  EXPECT_EQ(files.size() + 1, files_of(root_ + "/i").size());
  EXPECT_NE(out.find("README.md: left out"), std::string::npos) << out;
}

TEST_F(HubUpload, TokenFromHfHomeFile) {
  fs::create_directories(root_ + "/home");
  std::ofstream(root_ + "/home/token") << "secret\n";
  std::string out;
  ASSERT_EQ(lmtune(convert_args("t") + " --upload-repo me/tokenfile", &out), 0) << out;
  expect_round_trip("me/tokenfile", root_ + "/t");
}

TEST_F(HubUpload, NoTokenFailsBeforeAnyWork) {
  std::string out;
  EXPECT_NE(lmtune(convert_args("none") + " --upload-repo me/none", &out), 0);
  std::printf("%s", out.c_str());
  EXPECT_NE(out.find("--upload-repo: no Hugging Face token to upload me/none with: set HF_TOKEN"), std::string::npos)
      << out;
  EXPECT_EQ(out.find("[INFO] Loading"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(root_ + "/none"));
  out.clear();
  EXPECT_NE(lmtune("fuse --model " + kRoot + "/models/default --adapter-path " + root_ + " --save-path " + root_ +
                       "/f --upload-repo me/none",
                   &out),
            0);
  EXPECT_NE(out.find("no Hugging Face token"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(root_ + "/f"));
  ::setenv("HF_TOKEN", "secret", 1);
  out.clear();
  EXPECT_NE(lmtune(convert_args("bad") + " --upload-repo not-a-repo-id", &out), 0);
  EXPECT_NE(out.find("'not-a-repo-id' is not a Hub repo id"), std::string::npos) << out;
  EXPECT_TRUE(hub_.requests().empty());
}

TEST_F(HubUpload, WrongTokenSaysSoAndKeepsTheFolder) {
  ::setenv("HF_TOKEN", "wrong", 1);
  std::string out;
  EXPECT_NE(lmtune(convert_args("w") + " --upload-repo me/w", &out), 0);
  std::printf("%s", out.c_str());
  EXPECT_NE(out.find("creating the repo for me/w failed: HTTP 401"), std::string::npos) << out;
  EXPECT_NE(out.find("Invalid credentials"), std::string::npos) << out;
  EXPECT_NE(out.find("The model is kept in " + root_ + "/w"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(root_ + "/w/model.safetensors"));
  EXPECT_FALSE(hub_.has_repo("me/w"));
}

TEST_F(HubUpload, UnreachableEndpointKeepsTheFolder) {
  ::setenv("HF_TOKEN", "secret", 1);
  ::setenv("HF_ENDPOINT", "http://127.0.0.1:1", 1);  // nothing listens on port 1
  std::string out;
  EXPECT_NE(lmtune(convert_args("u") + " --upload-repo me/u", &out), 0);
  std::printf("%s", out.c_str());
  EXPECT_NE(out.find("cannot reach http://127.0.0.1:1"), std::string::npos) << out;
  EXPECT_NE(out.find("The model is kept in " + root_ + "/u (upload it later with `huggingface-cli upload me/u"),
            std::string::npos)
      << out;
  std::map<std::string, std::string> kept = files_of(root_ + "/u");
  EXPECT_TRUE(kept.count("model.safetensors") && kept.count("config.json") && kept.count("tokenizer.json"));
  for (const auto& e : fs::directory_iterator(root_))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

// The fake's upload API is the one huggingface_hub's client speaks (its LFS path: HF_HUB_DISABLE_XET=1):
// HfApi.upload_folder of an lmtune folder lands the same files as lmtune's upload.
TEST_F(HubUpload, HuggingfaceHubUploadsToTheFakeHubAsLmtuneDoes) {
  const std::string py = LMTUNE_PYTHON;
  std::string out;
  ASSERT_EQ(run(py + " -c 'import huggingface_hub' 2>&1", &out), 0) << "this test needs huggingface_hub in " << py;
  ::setenv("HF_TOKEN", "secret", 1);
  ASSERT_EQ(lmtune(convert_args("m") + " --upload-repo me/by-lmtune", &out), 0) << out;
  out.clear();
  const std::string script =
      "import os, sys\n"
      "from huggingface_hub import HfApi\n"
      "api = HfApi(endpoint=os.environ['HF_ENDPOINT'], token='secret')\n"
      "api.create_repo('me/by-hf', exist_ok=True)\n"
      "api.upload_folder(folder_path=sys.argv[1], repo_id='me/by-hf', commit_message='hf')\n";
  std::ofstream(root_ + "/up.py") << script;
  ASSERT_EQ(
      run("HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_PROGRESS_BARS=1 " + py + " " + root_ + "/up.py " + root_ + "/m 2>&1",
          &out),
      0)
      << out;
  const auto& ours = hub_.repo("me/by-lmtune").revisions.at("main").files;
  const auto& theirs = hub_.repo("me/by-hf").revisions.at("main").files;
  ASSERT_EQ(ours.size(), theirs.size());
  for (const auto& [name, f] : ours) {
    ASSERT_TRUE(theirs.count(name)) << name;
    EXPECT_TRUE(theirs.at(name).content == f.content) << name;
    EXPECT_EQ(theirs.at(name).lfs, f.lfs) << name;
  }
  EXPECT_EQ(hub_.count("POST", "/api/models/me/by-hf/commit/main"), 1);
}

}  // namespace
